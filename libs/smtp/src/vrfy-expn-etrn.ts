// VRFY, EXPN and ETRN (RFC 1985): each answered by its hook, or refused as
// disabled when the service gives none.
import { reply, Replies } from './reply';
import type { Session } from './session';

export function vrfy(s: Session, arg: string): void {
  if (!arg.trim()) return s.send(Replies.syntaxVrfy);
  const hook = s.ctx.hooks.onVrfy;
  if (!hook) return s.send(Replies.vrfyCannot);
  s.await(() => hook.call(s.ctx.hooks, s.info, arg.trim()), (r) => s.send(r));
}

export function expn(s: Session, arg: string): void {
  const hook = s.ctx.hooks.onExpn;
  if (!hook) return s.send(Replies.expnDisabled);
  if (!arg.trim()) return s.send(reply(501, '5.5.4', 'Syntax: EXPN list'));
  s.await(() => hook.call(s.ctx.hooks, s.info, arg.trim()), (r) => s.send(r));
}

export function etrn(s: Session, arg: string): void {
  const hook = s.ctx.hooks.onEtrn;
  if (!hook) return s.send(Replies.etrnDisabled);
  if (!s.info.heloName) return s.send(Replies.sendHeloFirst);
  if (s.info.envelope) return s.send(Replies.inTransaction);
  const node = arg.trim();
  if (!/^[@#]?[A-Za-z0-9.-]+$/.test(node)) return s.send(Replies.syntaxEtrn);
  s.await(
    () => hook.call(s.ctx.hooks, s.info, node),
    (r) => s.send(r ?? reply(250, '2.0.0', 'Queuing started')),
  );
}
