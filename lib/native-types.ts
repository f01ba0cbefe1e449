/** The shape of the native addon's exports (binding/*.cc). */
export interface NativeTensorHandle {
  readonly dtype: string;
  readonly shape: number[];
  readonly device: string;
  readonly disposed: boolean;
  read(dtype: string): ArrayBuffer;
  dispose(): void;
}

export interface NativeTensorClass {
  new (
    dtype: string,
    shape: number[],
    device: string,
    data?: ArrayBufferView | null,
    dataDtype?: string,
    zero?: boolean,
  ): NativeTensorHandle;
}

export type H = NativeTensorHandle;

export interface NativeInfo {
  threads: number;
  blas: {
    loaded: boolean;
    library: string;
    core: string;
    coretype: string;
    coretypeSetByMoeEp: boolean;
    threads: number;
    reason: string;
  };
  cuda: {
    built: boolean;
    available: boolean;
    /** The kernels run on the CPU emulator (a build with MOE_EP_CUDA=EMULATE): for tests, not for speed. */
    emulated: boolean;
    deviceCount: number;
    runtimeVersion: number;
    driverVersion: number;
    archs: string;
    reason: string;
  };
  gloo: { built: boolean };
}

export interface NativeModule {
  setErrorClass(cls: unknown): void;
  NativeTensor: NativeTensorClass;
  info(): NativeInfo;
  memoryStats(
    device: string,
    madeSince?: number,
  ): { tensors: number; bytes: number; peakBytes: number; cachedBytes: number; made: number };
  emptyCache(): void;
  synchronize(): Promise<void>;

  gate(x: H, wg: H): Promise<H>;
  gateBackward(x: H, wg: H, dlogits: H): Promise<{ dx: H; dwg: H }>;
  [op: string]: unknown;
}
