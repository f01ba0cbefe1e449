/** The address by which this host reaches another: the source address of the route the kernel picks. */
import { loadNative } from "../native";

/**
 * The local IPv4 address of the interface that routes to host:port, from the core
 * (cpp/comm/net.h): a UDP socket's connect() only chooses the route and the source
 * address; nothing is sent, the socket is closed at once, and it is never bound to
 * 0.0.0.0 on its own (Node's dgram binds first, then connects).
 */
export async function addressToward(host: string, port: number): Promise<string> {
  return loadNative().addressToward(host, port);
}
