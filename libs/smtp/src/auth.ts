// AUTH PLAIN and LOGIN (RFC 4954): the command, the SASL exchange (the
// session in Auth mode reads response lines) and the onAuth hook.
import { isPositive, Replies } from './reply';
import { Mode } from './session-context';
import type { Session } from './session';
import type { AuthRequest } from './types';

export type AuthState =
  | { mech: 'PLAIN' }
  | { mech: 'LOGIN'; step: 'user' }
  | { mech: 'LOGIN'; step: 'pass'; username: string };

export function authCommand(s: Session, arg: string): void {
  if (!s.ctx.hooks.onAuth) return s.send(Replies.authNotAvailable);
  if (!s.info.heloName || !s.info.esmtp) return s.send(Replies.sendHeloFirst);
  if (s.info.user) return s.send(Replies.alreadyAuthenticated);
  if (s.info.envelope) return s.send(Replies.inTransaction);
  if (!s.authOffered) return s.send(Replies.authNeedsTls);
  const parts = arg.split(' ');
  const mech = (parts[0] ?? '').toUpperCase();
  if (!mech || parts.length > 2) return s.send(Replies.syntaxAuth);
  const initial = parts[1];
  if (mech === 'PLAIN') {
    if (initial === undefined) {
      s.mode = Mode.Auth;
      s.auth = { mech: 'PLAIN' };
      s.write('334 \r\n');
      return;
    }
    return authPlain(s, initial);
  }
  if (mech === 'LOGIN') {
    s.mode = Mode.Auth;
    if (initial === undefined) {
      s.auth = { mech: 'LOGIN', step: 'user' };
      s.write('334 VXNlcm5hbWU6\r\n');
      return;
    }
    const user = decodeBase64(initial);
    if (user === undefined) {
      s.mode = Mode.Command;
      return s.send(Replies.authBadBase64);
    }
    s.auth = { mech: 'LOGIN', step: 'pass', username: user };
    s.write('334 UGFzc3dvcmQ6\r\n');
    return;
  }
  s.send(Replies.authUnknownMech);
}

export function authResponse(s: Session, line: string): void {
  const state = s.auth;
  s.mode = Mode.Command;
  s.auth = undefined;
  if (!state) return s.send(Replies.authAborted);
  if (line === '*') return s.send(Replies.authAborted);
  if (state.mech === 'PLAIN') return authPlain(s, line);
  const value = decodeBase64(line);
  if (value === undefined) return s.send(Replies.authBadBase64);
  if (state.step === 'user') {
    s.mode = Mode.Auth;
    s.auth = { mech: 'LOGIN', step: 'pass', username: value };
    s.write('334 UGFzc3dvcmQ6\r\n');
    return;
  }
  authVerify(s, { mechanism: 'LOGIN', username: state.username, password: value, authzid: '' });
}

function authPlain(s: Session, b64: string): void {
  const decoded = b64 === '=' ? '' : decodeBase64(b64);
  if (decoded === undefined) return s.send(Replies.authBadBase64);
  const parts = decoded.split('\0');
  if (parts.length !== 3 || !parts[1]) return s.send(Replies.authFailed);
  const [authzid, username, password] = parts as [string, string, string];
  if (authzid && authzid !== username) return s.send(Replies.authFailed);
  authVerify(s, { mechanism: 'PLAIN', username, password, authzid });
}

function authVerify(s: Session, req: AuthRequest): void {
  const hook = s.ctx.hooks.onAuth!;
  s.await(
    () => hook.call(s.ctx.hooks, s.info, req),
    (r) => {
      if (r.ok) {
        s.info.user = r.user;
        return s.send(Replies.authOk);
      }
      const refusal = r.reply && !isPositive(r.reply) ? r.reply : Replies.authFailed;
      s.send(refusal);
    },
  );
}

function decodeBase64(s: string): string | undefined {
  if (s.length % 4 !== 0 || !/^[A-Za-z0-9+/]*={0,2}$/.test(s)) return undefined;
  const text = Buffer.from(s, 'base64').toString('utf8');
  return text.includes('\ufffd') ? undefined : text;
}
