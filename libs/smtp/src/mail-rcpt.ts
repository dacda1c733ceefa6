// MAIL FROM and RCPT TO: the envelope. Paths and parameters are parsed
// strictly (address.ts, params.ts); each is put to its hook (onMailFrom,
// onRcptTo) before it joins the envelope.
import { parsePath } from './address';
import { parseMailParams, parseRcptParams } from './params';
import { closing, isPositive, reply, Replies } from './reply';
import type { Session } from './session';
import type { MailFrom, RcptTo } from './types';

export function mail(s: Session, arg: string): void {
  if (!s.info.heloName) return s.send(Replies.sendHeloFirst);
  if (s.info.envelope) return s.send(Replies.nestedMail);
  if (s.ctx.authRequired && !s.info.user) {
    return s.send(s.secure || !s.ctx.secureContext ? Replies.authRequired : Replies.mustIssueStarttls);
  }
  const lim = s.ctx.limits.maxTransactions;
  if (lim > 0 && s.info.transactions >= lim) {
    s.endReason = 'too many transactions';
    return s.closeWith(closing(s.ctx.hostname, '4.7.0', 'Error: too many messages in one session'));
  }
  const m = /^FROM: */i.exec(arg);
  // No path at all is a command syntax error (5.5.4, as Postfix), not a bad address (5.1.7).
  if (!m || m[0].length === arg.length) return s.send(reply(501, '5.5.4', 'Syntax: MAIL FROM:<address>'));
  const path = parsePath(arg, m[0].length, { allowNull: true, utf8: true });
  if (!path.ok) return s.send(path.kind === 'too_long' ? reply(501, '5.1.7', 'Error: sender address too long') : reply(501, '5.1.7', 'Error: bad sender address syntax'));
  const rest = arg.slice(path.end);
  if (rest.length > 0 && rest.charCodeAt(0) !== 0x20) return s.send(reply(501, '5.1.7', 'Error: bad sender address syntax'));
  const params = parseMailParams(rest, {
    maxMessageSize: s.ctx.limits.maxMessageSize,
    tls: s.secure,
    authEnabled: s.authOffered,
  });
  if (!params.ok) return s.send(params.reply);
  if (path.address.utf8 && !params.params.smtputf8) return s.send(Replies.nonAsciiAddress);
  const from: MailFrom = { address: path.address.address, parsed: path.address, params: params.params };
  const start = () => {
    s.seq++;
    s.info.envelope = { seq: s.seq, mailFrom: from, rcptTo: [], chunking: false, startedAt: new Date(), state: {} };
  };
  const hook = s.ctx.hooks.onMailFrom;
  if (!hook) {
    start();
    return s.send(Replies.mailOk);
  }
  s.await(
    () => hook.call(s.ctx.hooks, s.info, from),
    (r) => {
      if (r && !isPositive(r)) return s.send(r);
      start();
      s.send(r ?? Replies.mailOk);
    },
  );
}

export function rcpt(s: Session, arg: string): void {
  const env = s.info.envelope;
  if (!env) return s.send(Replies.needMail);
  const m = /^TO: */i.exec(arg);
  if (!m || m[0].length === arg.length) return s.send(reply(501, '5.5.4', 'Syntax: RCPT TO:<address>'));
  const smtputf8 = env.mailFrom.params.smtputf8;
  const path = parsePath(arg, m[0].length, { allowPostmaster: true, utf8: smtputf8 });
  if (!path.ok) {
    if (path.kind === 'non_ascii') return s.send(Replies.nonAsciiAddress);
    return s.send(reply(501, '5.1.3', path.kind === 'too_long' ? 'Error: recipient address too long' : 'Error: bad recipient address syntax'));
  }
  const rest = arg.slice(path.end);
  if (rest.length > 0 && rest.charCodeAt(0) !== 0x20) return s.send(reply(501, '5.1.3', 'Error: bad recipient address syntax'));
  const params = parseRcptParams(rest);
  if (!params.ok) return s.send(params.reply);
  if (env.rcptTo.length >= s.ctx.limits.maxRecipients) return s.send(Replies.tooManyRecipients);
  const address = path.address.address;
  const key = `${path.address.local}@${path.address.asciiDomain}`;
  if (env.rcptTo.some((r) => `${r.parsed.local}@${r.parsed.asciiDomain}` === key)) return s.send(Replies.rcptOk);
  const to: RcptTo = { address, parsed: path.address, params: params.params };
  const hook = s.ctx.hooks.onRcptTo;
  if (!hook) {
    env.rcptTo.push(to);
    return s.send(Replies.rcptOk);
  }
  s.await(
    () => hook.call(s.ctx.hooks, s.info, to, env),
    (r) => {
      if (r && !isPositive(r)) return s.send(r);
      if (s.info.envelope !== env) return s.send(Replies.needMail);
      env.rcptTo.push(to);
      s.send(r ?? Replies.rcptOk);
    },
  );
}
