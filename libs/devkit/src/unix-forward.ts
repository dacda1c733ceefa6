// A unix-domain socket that forwards every connection to a TCP address: puts
// a loopback sink (e.g. an SmtpSink with `lmtp: true`) behind a socket path,
// the way a mailbox server's LMTP listener often is (Dovecot, Cyrus).
//
//   const fwd = await forwardUnixSocket('/tmp/x/lmtp.sock', sink.host, sink.port);
//   ... route target "unix:/tmp/x/lmtp.sock" ...
//   await fwd.close();
import fs from 'node:fs';
import net from 'node:net';

export interface UnixForward {
  path: string;
  /** Connections accepted on the socket so far. */
  readonly connections: number;
  close(): Promise<void>;
}

export async function forwardUnixSocket(socketPath: string, host: string, port: number): Promise<UnixForward> {
  fs.rmSync(socketPath, { force: true });
  const sockets = new Set<net.Socket>();
  let connections = 0;
  const server = net.createServer((client) => {
    connections++;
    const upstream = net.connect({ host, port });
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('error', () => undefined);
      s.on('close', () => {
        sockets.delete(s);
        client.destroy();
        upstream.destroy();
      });
    }
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(socketPath, () => resolve());
  });
  return {
    path: socketPath,
    get connections() {
      return connections;
    },
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      fs.rmSync(socketPath, { force: true });
    },
  };
}
