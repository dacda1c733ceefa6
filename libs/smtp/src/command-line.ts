// Reading a command line (or a SASL response line) off the input: length
// limits (RFC 5321 512 octets, AUTH lines RFC 4954 12288), only CRLF ends a
// line (a bare CR or LF closes the session), no control characters, valid
// UTF-8; then the line goes to the command table (commands.ts) or to AUTH.
import { authResponse } from './auth';
import { command } from './commands';
import { reply, Replies } from './reply';
import { Mode } from './session-context';
import type { Session } from './session';

const LF = 0x0a;
const CR = 0x0d;
/** RFC 4954: AUTH command and SASL response lines may be this long. */
const AUTH_LINE_LIMIT = 12_288;

/** One command (or SASL response) line. Returns false when more input is needed. */
export function commandStep(s: Session): boolean {
  const buf = s.inBuf!;
  const lf = buf.indexOf(LF);
  let limit = s.ctx.limits.maxCommandLine;
  if ((lf < 0 ? buf.length : lf + 1) > limit) {
    const authLine = s.mode === Mode.Auth || (buf.length >= 5 && buf.subarray(0, 5).toString('latin1').toUpperCase() === 'AUTH ');
    if (authLine) limit = AUTH_LINE_LIMIT;
  }
  if (lf < 0) {
    if (buf.length > limit || s.skipLine) {
      // Too long: drop what we have and the rest of the line, then say so.
      s.skipLine = true;
      s.inBuf = null;
    }
    return false;
  }
  const line = s.take(lf + 1);
  if (s.skipLine) {
    s.skipLine = false;
    s.auth = undefined;
    if (s.mode === Mode.Auth) s.mode = Mode.Command;
    s.send(Replies.lineTooLong);
    return true;
  }
  if (lf + 1 > limit) {
    s.auth = undefined;
    if (s.mode === Mode.Auth) s.mode = Mode.Command;
    s.send(Replies.lineTooLong);
    return true;
  }
  if (lf === 0 || line[lf - 1] !== CR) {
    s.endReason = 'bare LF in command';
    s.closeWith(reply(521, '5.5.2', `${s.ctx.hostname} Error: bare <LF> received`));
    return false;
  }
  const content = line.subarray(0, lf - 1);
  if (content.indexOf(CR) >= 0) {
    s.endReason = 'bare CR in command';
    s.closeWith(reply(521, '5.5.2', `${s.ctx.hostname} Error: bare <CR> received`));
    return false;
  }
  let text = content.toString('latin1');
  // eslint-disable-next-line no-control-regex
  if (/[\x00-\x08\x0a-\x1f\x7f]/.test(text)) {
    s.send(Replies.badCharacter);
    return true;
  }
  // eslint-disable-next-line no-control-regex
  if (/[^\x00-\x7f]/.test(text)) {
    text = content.toString('utf8');
    if (text.includes('\ufffd')) {
      s.send(Replies.badUtf8);
      return true;
    }
  }
  if (s.mode === Mode.Auth) {
    authResponse(s, text);
    return true;
  }
  command(s, text);
  return true;
}
