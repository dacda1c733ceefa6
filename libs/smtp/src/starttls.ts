// TLS: STARTTLS (RFC 3207) and implicit TLS (submissions), both an upgrade
// of the session's socket in place.
import tls from 'node:tls';
import { reply, Replies } from './reply';
import { Mode } from './session-context';
import type { Session } from './session';
import type { TlsInfo } from './types';

function cipherBits(name: string): number | undefined {
  const m = /AES[_-]?(128|256)|CHACHA20|CAMELLIA[_-]?(128|256)/i.exec(name);
  if (!m) return undefined;
  if (/CHACHA20/i.test(m[0])) return 256;
  return Number(m[1] ?? m[2]);
}

export function startTls(s: Session, arg: string): void {
  if (s.secure) return s.send(Replies.tlsActive);
  if (!s.ctx.secureContext) return s.send(Replies.notImplemented);
  if (arg) return s.send(reply(501, '5.5.4', 'Syntax: STARTTLS'));
  if (s.info.envelope) return s.send(Replies.inTransaction);
  if (!s.info.heloName) return s.send(Replies.sendHeloFirst);
  // Plaintext pipelined after STARTTLS must not be carried into the TLS
  // session (CVE-2011-0411): it is dropped.
  s.inBuf = null;
  s.send(Replies.readyTls);
  s.flush();
  upgrade(s, false);
}

export function upgrade(s: Session, implicit: boolean): void {
  let context: tls.SecureContext;
  try {
    context = s.ctx.secureContext!();
  } catch (err) {
    s.ctx.logger?.warn({ session: s.info.id, err: (err as Error).message }, 'no TLS context');
    if (implicit) return s.destroy();
    return s.send(Replies.startTlsUnavailable);
  }
  const raw = s.sock;
  s.mode = Mode.Handshake;
  s.busy = true;
  s.detach(raw);
  raw.pause();
  raw.setTimeout(0);
  const sock = new tls.TLSSocket(raw, { isServer: true, secureContext: context, requestCert: false });
  s.sock = sock;
  s.paused = false;
  s.attach(sock);
  sock.setTimeout(s.ctx.limits.handshakeTimeoutMs);
  sock.once('secure', () => {
    const cipher = sock.getCipher();
    const info: TlsInfo = { protocol: sock.getProtocol() ?? 'unknown', cipher: cipher?.standardName ?? cipher?.name ?? 'unknown', implicit };
    const bits = cipherBits(info.cipher);
    if (bits !== undefined) info.bits = bits;
    s.info.tls = info;
    if (implicit) {
      s.busy = false;
      s.beginSession();
      return;
    }
    // RFC 3207: forget everything learned before TLS.
    s.info.heloName = undefined;
    s.info.esmtp = false;
    s.pipelining = false;
    s.mode = Mode.Command;
    s.busy = false;
    s.sock.setTimeout(s.ctx.limits.commandTimeoutMs);
    s.pump();
  });
}
