// One webhook request: POST a JSON body, take the status, discard the
// answer. Bounded (I4): connect and total timeouts, at most RESPONSE_READ_MAX
// bytes of an answer read (then the connection is dropped), no redirects
// followed (a 3xx is a failure), the address checked as it connects.
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import { addressRefusal, guardedLookup, RefusedAddressError, type AddressRules } from './address';

/** An answer's body is read and discarded up to this many bytes; beyond, the connection is closed. */
const RESPONSE_READ_MAX = 64 * 1024;

export interface PostOptions extends AddressRules {
  connectTimeoutMs: number;
  timeoutMs: number;
}

export interface Agents {
  http: http.Agent;
  https: https.Agent;
}

export interface PostResult {
  /** HTTP status; 0 when there was no answer. */
  status: number;
  /** What went wrong, for last_error and the log ("HTTP 500", "timeout after 10000 ms", ...). */
  error?: string;
  /** The address was refused (SSRF guard): a configuration problem, not the receiver's. */
  refused?: boolean;
}

/**
 * Keep-alive connections of one endpoint. Each endpoint has its own: an
 * agent's socket limit is per origin, and endpoints on one origin (or a
 * hanging one) must not wait for each other's sockets.
 */
export function createAgents(sockets: number): Agents {
  const o = { keepAlive: true, maxSockets: sockets, maxFreeSockets: sockets, timeout: 60_000 };
  return { http: new http.Agent(o), https: new https.Agent(o) };
}

export function post(url: URL, headers: Record<string, string>, body: Buffer, o: PostOptions, agents: Agents): Promise<PostResult> {
  const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
  // An IP literal never goes through lookup: checked here.
  if (net.isIP(host)) {
    const refusal = addressRefusal(host, url.protocol, o);
    if (refusal) return Promise.resolve({ status: 0, error: `refused: ${refusal}`, refused: true });
  }
  const secure = url.protocol === 'https:';
  return new Promise<PostResult>((resolve) => {
    let settled = false;
    let status = 0;
    const finish = (r: PostResult) => {
      if (settled) return;
      settled = true;
      clearTimeout(total);
      clearTimeout(connect);
      resolve(r);
    };
    const req = (secure ? https : http).request(
      url,
      {
        method: 'POST',
        agent: secure ? agents.https : agents.http,
        lookup: guardedLookup(url.protocol, o) as unknown as net.LookupFunction,
        headers: {
          'content-type': 'application/json',
          'content-length': String(body.length),
          'user-agent': 'Tern-Webhooks/1',
          ...headers,
        },
      },
      (res) => {
        status = res.statusCode ?? 0;
        const error = status >= 200 && status < 300 ? undefined : `HTTP ${status}`;
        let read = 0;
        res.on('data', (chunk: Buffer) => {
          read += chunk.length;
          // Nobody reads webhook answers: past a bound, stop taking them.
          if (read > RESPONSE_READ_MAX) {
            res.destroy();
            finish({ status, error });
          }
        });
        res.on('end', () => finish({ status, error }));
        res.on('error', () => finish({ status, error }));
        res.on('close', () => finish({ status, error }));
      },
    );
    const total = setTimeout(() => {
      req.destroy();
      // Headers in: the answer counts, only its body was slow.
      if (status) finish({ status, error: status >= 200 && status < 300 ? undefined : `HTTP ${status}` });
      else finish({ status: 0, error: `timeout after ${o.timeoutMs} ms` });
    }, o.timeoutMs);
    let connect: NodeJS.Timeout | undefined;
    req.on('socket', (socket: net.Socket) => {
      if (!socket.connecting) return;
      connect = setTimeout(() => {
        req.destroy();
        finish({ status: 0, error: `no connection within ${o.connectTimeoutMs} ms` });
      }, o.connectTimeoutMs);
      socket.once(secure ? 'secureConnect' : 'connect', () => clearTimeout(connect));
    });
    req.on('error', (err: NodeJS.ErrnoException) => {
      if (err instanceof RefusedAddressError) finish({ status: 0, error: `refused: ${err.message}`, refused: true });
      else finish({ status: 0, error: err.code ? `${err.code}: ${err.message}` : err.message });
    });
    req.end(body);
  });
}
