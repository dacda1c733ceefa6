// EHLO and HELO: the client's name, the onHelo hook, a new start of the
// session's transaction state, and the extensions we offer.
import { formatReply, isPositive, reply, Replies } from './reply';
import type { Session } from './session';

export function helo(s: Session, esmtp: boolean, arg: string): void {
  const name = arg.trim();
  if (!name) return s.send(esmtp ? Replies.syntaxEhlo : Replies.syntaxHelo);
  if (!/^[\x21-\x7e\u00a0-\uffff]{1,255}$/.test(name)) return s.send(esmtp ? Replies.syntaxEhlo : Replies.syntaxHelo);
  const hook = s.ctx.hooks.onHelo;
  const accept = () => {
    s.resetTransaction();
    s.info.heloName = name;
    s.info.esmtp = esmtp;
    s.pipelining = esmtp;
    if (!esmtp) return s.write(formatReply(reply(250, undefined, s.ctx.hostname), false));
    s.write(formatReply(reply(250, undefined, [s.ctx.hostname, ...extensions(s)]), false));
  };
  if (!hook) return accept();
  s.await(
    () => hook.call(s.ctx.hooks, s.info, name, esmtp),
    (r) => {
      if (r && !isPositive(r)) return s.send(r);
      accept();
    },
  );
}

function extensions(s: Session): string[] {
  const ext = ['PIPELINING', `SIZE ${s.ctx.limits.maxMessageSize}`];
  if (s.ctx.hooks.onEtrn) ext.push('ETRN');
  if (s.ctx.secureContext && !s.secure) ext.push('STARTTLS');
  if (s.authOffered && !s.info.user) ext.push('AUTH PLAIN LOGIN');
  ext.push('ENHANCEDSTATUSCODES', '8BITMIME', 'DSN', 'SMTPUTF8', 'CHUNKING', 'BINARYMIME');
  if (s.secure) ext.push('REQUIRETLS');
  return ext;
}
