/**
 * GPU timing: events recorded on a device's compute stream in queue order
 * (after every op called before), and the time between two of them. For
 * benchmarks (scripts/device-check.js): kernels are timed on the device, not
 * through the Promise round trips that launch them.
 */
import { MoEError } from "./errors";
import type { NativeEvent } from "./addon";
import { loadNative } from "./native";
import { checkDevice } from "./tensor";
import type { DeviceName } from "./tensor";

export class DeviceEvent {
  /** @internal */
  readonly handle: NativeEvent;
  readonly device: DeviceName;

  private constructor(handle: NativeEvent, device: DeviceName) {
    this.handle = handle;
    this.device = device;
  }

  /** An event on `device` ("cuda:N"), recorded after the ops queued before this call. */
  static async record(device: DeviceName): Promise<DeviceEvent> {
    const d = checkDevice(device);
    if (d === "cpu")
      throw new MoEError(`Expected a cuda device for DeviceEvent.record but received "cpu"`, "ERR_MOE_DEVICE");
    return new DeviceEvent(await loadNative().recordEvent(d), d);
  }

  /** Milliseconds of device time from `start` to this event (waits for this event). */
  async elapsedMs(start: DeviceEvent): Promise<number> {
    if (!(start instanceof DeviceEvent)) throw new MoEError("Expected a DeviceEvent for start", "ERR_MOE_VALUE");
    return loadNative().eventElapsedMs(start.handle, this.handle);
  }
}
