// The command table: one line in, the verb's handler called (each in the file
// of its concern). Before it: RFC 2920 synchronization (no pipelining before
// EHLO, none behind EHLO/HELO), a server shutting down (421 4.3.2 outside a
// transaction), a BDAT transfer in progress.
import { authCommand } from './auth';
import { bdatCommand } from './bdat';
import { dataCommand } from './data';
import { helo } from './helo';
import { mail, rcpt } from './mail-rcpt';
import { closing, reply, Replies } from './reply';
import type { Session } from './session';
import { startTls } from './starttls';
import { etrn, expn, vrfy } from './vrfy-expn-etrn';

export function command(s: Session, line: string): void {
  const sp = line.indexOf(' ');
  const verb = (sp < 0 ? line : line.slice(0, sp)).toUpperCase();
  const arg = sp < 0 ? '' : line.slice(sp + 1);
  s.ctx.stats.command(verb);

  // RFC 2920: without PIPELINING (no EHLO yet, or HELO) a client must wait
  // for each reply, and EHLO/HELO always end a group, as DATA does (3.1):
  // text sent before the 354 would be read as commands were DATA refused.
  // Input already queued behind such a command is a synchronization error
  // (Postfix 3.9 smtpd_forbid_unauth_pipelining).
  if (s.inBuf !== null && (!s.pipelining || verb === 'EHLO' || verb === 'HELO' || verb === 'DATA')) {
    s.endReason = 'improper pipelining';
    s.closeWith(Replies.pipelining);
    return;
  }
  if (s.ctx.closing() && !s.info.envelope && verb !== 'QUIT') {
    s.endReason = 'server shutdown';
    s.closeWith(closing(s.ctx.hostname, '4.3.2', 'Service shutting down, closing transmission channel'));
    return;
  }
  // Between BDAT chunks only BDAT, RSET, NOOP and QUIT make sense.
  if (s.data && !s.data.ended && verb !== 'BDAT' && verb !== 'RSET' && verb !== 'QUIT' && verb !== 'NOOP') {
    s.send(reply(503, '5.5.1', 'Error: BDAT transfer in progress; send BDAT, RSET or QUIT'));
    return;
  }

  switch (verb) {
    case 'EHLO':
    case 'HELO':
      return helo(s, verb === 'EHLO', arg);
    case 'MAIL':
      return mail(s, arg);
    case 'RCPT':
      return rcpt(s, arg);
    case 'DATA':
      return dataCommand(s, arg);
    case 'BDAT':
      return bdatCommand(s, arg);
    case 'RSET':
      if (arg) return s.send(Replies.syntaxNoArgs);
      s.resetTransaction();
      return s.send(Replies.ok);
    case 'NOOP':
      return s.send(Replies.ok);
    case 'QUIT':
      s.endReason = 'quit';
      return s.closeWith(Replies.bye, true);
    case 'HELP':
      return s.send(Replies.help);
    case 'VRFY':
      return vrfy(s, arg);
    case 'EXPN':
      return expn(s, arg);
    case 'ETRN':
      return etrn(s, arg);
    case 'STARTTLS':
      return startTls(s, arg);
    case 'AUTH':
      return authCommand(s, arg);
    case 'TURN':
    case 'ATRN':
    case 'SEND':
    case 'SOML':
    case 'SAML':
      return s.send(Replies.notImplemented);
    default:
      return s.send(Replies.notRecognized);
  }
}
