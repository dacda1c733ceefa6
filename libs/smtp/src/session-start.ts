// What comes before the greeting: the PROXY header (v1/v2) from a trusted
// load balancer, which gives the client's address; the per-client session
// limit on that address; implicit TLS. Then Session.beginSession greets.
import { normalizeIp, parseProxyHeader } from './proxy';
import { reply, Replies } from './reply';
import { Mode } from './session-context';
import type { Session } from './session';
import { upgrade } from './starttls';

/** The client's address is known (socket or PROXY header): take its slot, then TLS or the greeting. */
export function afterProxy(s: Session): void {
  const ip = s.info.clientAddress;
  if (!s.ctx.limiter.tryAcquireClient(ip)) {
    s.endReason = 'too many connections from client';
    s.closeWith(reply(421, '4.7.0', `${s.ctx.hostname} Error: too many connections from ${ip}`));
    return;
  }
  s.clientSlot = ip;
  if (s.ctx.implicitTls) {
    upgrade(s, true);
    return;
  }
  s.beginSession();
}

/** Proxy mode: waits for the whole header; false: nothing more to read in this mode. */
export function proxyStep(s: Session): boolean {
  const r = parseProxyHeader(s.inBuf!);
  if (r.status === 'incomplete') return false;
  if (r.status === 'error') {
    s.ctx.logger?.warn({ session: s.info.id, remote: s.info.remoteAddress, err: r.message }, 'bad PROXY header');
    s.endReason = 'bad PROXY header';
    s.destroy();
    return false;
  }
  s.take(r.consumed);
  if (r.source) {
    s.info.clientAddress = normalizeIp(r.source.address);
    s.info.clientPort = r.source.port;
    s.info.proxied = true;
  }
  const rest = s.inBuf;
  s.inBuf = null;
  if (s.ctx.implicitTls && rest) {
    // The client's first TLS octets came with the header: hand them to TLS.
    s.sock.pause();
    s.sock.unshift(rest);
  } else if (rest) {
    // Plain SMTP client talking before the greeting.
    s.endReason = 'pregreet';
    afterProxyThenRefuse(s);
    return false;
  }
  afterProxy(s);
  return false;
}

function afterProxyThenRefuse(s: Session): void {
  s.mode = Mode.Command;
  s.closeWith(Replies.pregreet);
}
