/** The address by which this host reaches another: the source address of the route the kernel picks. */
import * as dgram from "dgram";

/**
 * The local IPv4 address of the interface that routes to host:port. A UDP
 * socket's connect() only chooses the route and the source address; nothing
 * is sent, and the socket is closed at once.
 */
export function addressToward(host: string, port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = dgram.createSocket("udp4");
    socket.on("error", (e) => {
      socket.close();
      reject(e);
    });
    socket.connect(port, host, () => {
      const { address } = socket.address();
      socket.close();
      resolve(address);
    });
  });
}
