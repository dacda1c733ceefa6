// Human output of the CLI: aligned tables and the message view. Pure
// functions of the API responses (and `now`, so tests are deterministic).
import {
  type Alias,
  type ApplyActionResponse,
  AttemptOutcome,
  type Destination,
  type DestinationSummary,
  type Domain,
  DomainKind,
  DsnNotify,
  DsnRet,
  BodyType,
  Listener,
  type Mailbox,
  type MessageDetail,
  MessageOrigin,
  type MessageSummary,
  RecipientCheck,
  type RecipientStatus,
  RecipientState,
  type Route,
  RouteKind,
  type SmtpReply,
  type Suppression,
  TlsPolicy,
  type User,
} from '@tern/proto';
import type { ActionName } from './requests';

/** Lower-case name of an enum value without its prefix: RECIPIENT_STATE_HELD -> held. */
export function enumName(e: Record<string | number, string | number>, prefix: string, value: number): string {
  const name = e[value];
  return typeof name === 'string' ? name.slice(prefix.length).toLowerCase() : String(value);
}

export const stateName = (s: RecipientState) => enumName(RecipientState, 'RECIPIENT_STATE_', s);

/** Columns padded to the widest cell; the last column is not padded. */
export function table(headers: string[], rows: string[][]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd();
  return [line(headers), ...rows.map(line)].join('\n') + '\n';
}

export function truncate(s: string, max: number): string {
  const one = s.replace(/\s+/g, ' ').trim();
  return one.length <= max ? one : one.slice(0, max - 1) + '…';
}

/** Compact age: 45s, 12m, 3h, 2d. */
export function age(from: Date | undefined, now: Date): string {
  if (!from) return '-';
  const s = Math.max(0, Math.round((now.getTime() - from.getTime()) / 1000));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m`;
  if (s < 86400) return `${Math.floor(s / 3600)}h${s % 3600 >= 60 ? `${Math.floor((s % 3600) / 60)}m` : ''}`;
  return `${Math.floor(s / 86400)}d${s % 86400 >= 3600 ? `${Math.floor((s % 86400) / 3600)}h` : ''}`;
}

/** Time until `to` (or "now" when due): in 4m, now. */
export function until(to: Date | undefined, now: Date): string {
  if (!to) return '-';
  return to.getTime() <= now.getTime() ? 'now' : `in ${age(now, to)}`;
}

export const iso = (d: Date | undefined) => (d ? d.toISOString().replace(/\.\d{3}Z$/, 'Z') : '-');

export function bytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 ** 2) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1024 ** 3) return `${(n / 1024 ** 2).toFixed(1)} MiB`;
  return `${(n / 1024 ** 3).toFixed(1)} GiB`;
}

export const sender = (s: string) => (s === '' ? '<>' : s);

export function reply(r: SmtpReply | undefined): string {
  if (!r || (r.code === 0 && !r.text)) return '-';
  return [r.code || '', r.enhanced, r.text].filter((x) => x !== '' && x !== undefined).join(' ');
}

/** "3 deferred, 1 queued" for a message's recipients. */
function stateCounts(recipients: RecipientStatus[]): string {
  const counts = new Map<string, number>();
  for (const r of recipients) counts.set(stateName(r.state), (counts.get(stateName(r.state)) ?? 0) + 1);
  return [...counts].map(([s, n]) => `${n} ${s}`).join(', ') || '-';
}

/** `pending`: the listing is `queue ls` without --state, which the output says, with the way to history. */
export function formatMessageList(messages: MessageSummary[], nextPageToken: string, now: Date, pending = false): string {
  if (messages.length === 0) return pending ? 'No messages with recipients still to do (history: --state final or --state all).\n' : 'No messages match.\n';
  const rows = messages.map((m) => {
    const first = m.recipients[0]?.address ?? '';
    const more = m.recipientCount > 1 ? ` (+${m.recipientCount - 1})` : '';
    return [m.queueId, age(m.createdAt, now), bytes(m.size), sender(m.sender), `${first}${more}` || '-', stateCounts(m.recipients)];
  });
  let out = table(['QUEUE ID', 'AGE', 'SIZE', 'SENDER', 'RECIPIENTS', 'STATE'], rows);
  out += `\n${messages.length} message${messages.length === 1 ? '' : 's'}${pending ? ' with recipients still to do, newest first' : ', newest first'}`;
  out += nextPageToken ? `; more with --page-token ${nextPageToken}\n` : '\n';
  return out;
}

/** qshape-like: one row per destination, a column per state present, totals. */
export function formatSummary(rows: DestinationSummary[], now: Date): string {
  if (rows.length === 0) return 'The queue is empty.\n';
  const states = [...new Set(rows.map((r) => r.state))].sort((a, b) => a - b);
  const byDest = new Map<string, { counts: Map<RecipientState, number>; total: number; oldest?: Date; lastError: string }>();
  for (const r of rows) {
    const d = byDest.get(r.destination) ?? { counts: new Map(), total: 0, oldest: undefined, lastError: '' };
    d.counts.set(r.state, (d.counts.get(r.state) ?? 0) + r.count);
    d.total += r.count;
    if (r.oldest && (!d.oldest || r.oldest < d.oldest)) d.oldest = r.oldest;
    if (r.lastError && !d.lastError) d.lastError = r.lastError;
    byDest.set(r.destination, d);
  }
  const dests = [...byDest].sort((a, b) => b[1].total - a[1].total || a[0].localeCompare(b[0]));
  const body = dests.map(([name, d]) => [
    name || '-',
    String(d.total),
    ...states.map((s) => String(d.counts.get(s) ?? 0)),
    age(d.oldest, now),
    truncate(d.lastError, 60) || '-',
  ]);
  const total = [
    'TOTAL',
    String(dests.reduce((n, [, d]) => n + d.total, 0)),
    ...states.map((s) => String(dests.reduce((n, [, d]) => n + (d.counts.get(s) ?? 0), 0))),
    '',
    '',
  ];
  return table(['DESTINATION', 'TOTAL', ...states.map((s) => stateName(s).toUpperCase()), 'OLDEST', 'LAST ERROR'], [...body, total]);
}

const notify = (n: DsnNotify[]) => (n.length === 0 ? '' : n.map((x) => enumName(DsnNotify, 'DSN_NOTIFY_', x).toUpperCase()).join(','));

export function formatMessage(m: MessageDetail, now: Date): string {
  const e = m.envelope;
  const lines: string[] = [];
  const field = (name: string, value: string | undefined) => {
    if (value !== undefined && value !== '') lines.push(`${(name + ':').padEnd(14)}${value}`);
  };
  field('Queue ID', m.queueId);
  field('Arrived', e?.arrivalTime ? `${iso(e.arrivalTime)} (${age(e.arrivalTime, now)} ago)` : `${iso(m.createdAt)} (${age(m.createdAt, now)} ago)`);
  field('Origin', enumName(MessageOrigin, 'MESSAGE_ORIGIN_', m.origin));
  // Under 1 KiB the rounded form would only repeat the count.
  field('Size', `${m.size < 1024 ? `${m.size} bytes` : `${bytes(m.size)} (${m.size} bytes)`}${m.bodyRemoved ? ', body removed' : ''}`);
  field('Sender', `<${e?.sender ?? ''}>`);
  if (e) {
    const client = [e.clientName, e.clientAddress ? `[${e.clientAddress}]` : ''].filter(Boolean).join(' ');
    field('Client', client);
    field('HELO', e.heloName);
    field('Protocol', [e.protocol, e.listener ? `on ${enumName(Listener, 'LISTENER_', e.listener)}` : ''].filter(Boolean).join(' '));
    field('Auth user', e.authUser);
    const dsn = [e.envid ? `ENVID=${e.envid}` : '', e.ret ? `RET=${enumName(DsnRet, 'DSN_RET_', e.ret).toUpperCase()}` : ''].filter(Boolean).join(' ');
    field('DSN', dsn);
    const params = [
      e.bodyType ? `BODY=${enumName(BodyType, 'BODY_TYPE_', e.bodyType).toUpperCase()}` : '',
      e.smtputf8 ? 'SMTPUTF8' : '',
      e.requiretls ? 'REQUIRETLS' : '',
      e.declaredSize ? `SIZE=${e.declaredSize}` : '',
    ]
      .filter(Boolean)
      .join(' ');
    field('Parameters', params);
  }
  lines.push('');
  lines.push(`Recipients (${m.recipients.length})`);
  lines.push(
    table(
      ['RECIPIENT', 'STATE', 'DESTINATION', 'ATTEMPTS', 'NEXT ATTEMPT', 'LAST REPLY'],
      m.recipients.map((r) => [
        r.address + (notify(r.notify) ? ` NOTIFY=${notify(r.notify)}` : ''),
        stateName(r.state),
        r.destination || '-',
        String(r.attemptCount),
        r.state === RecipientState.RECIPIENT_STATE_DEFERRED || r.state === RecipientState.RECIPIENT_STATE_QUEUED ? until(r.nextAttemptAt, now) : '-',
        truncate(reply(r.lastReply), 80),
      ]),
    ).trimEnd(),
  );
  const attempts = m.recipients.flatMap((r) => r.attempts.map((a) => ({ r, a })));
  if (attempts.length > 0) {
    attempts.sort((x, y) => (x.a.startedAt?.getTime() ?? 0) - (y.a.startedAt?.getTime() ?? 0));
    lines.push('');
    lines.push('Attempts');
    lines.push(
      table(
        ['TIME', 'RECIPIENT', 'OUTCOME', 'REMOTE', 'TLS', 'DURATION', 'REPLY'],
        attempts.map(({ r, a }) => [
          iso(a.startedAt),
          r.address,
          enumName(AttemptOutcome, 'ATTEMPT_OUTCOME_', a.outcome) + (a.bounceClass ? ` (${a.bounceClass})` : ''),
          [a.remoteHost, a.remoteIp ? `[${a.remoteIp}]` : ''].filter(Boolean).join(' ') || '-',
          a.tls?.used ? `${a.tls.version}${a.tls.verified ? ' verified' : ''}` : 'no',
          `${a.durationMs} ms`,
          truncate(reply(a.reply), 100),
        ]),
      ).trimEnd(),
    );
  }
  if (m.operatorEvents.length > 0) {
    lines.push('');
    lines.push('Operator events');
    lines.push(table(['TIME', 'OPERATOR', 'ACTION', 'REASON'], m.operatorEvents.map((o) => [iso(o.at), o.operator, o.action, o.reason || '-'])).trimEnd());
  }
  if (m.headers) {
    lines.push('');
    lines.push('Headers');
    lines.push(m.headers.replace(/\r\n/g, '\n').trimEnd());
  }
  return lines.join('\n') + '\n';
}

const PAST: Record<ActionName, string> = { hold: 'held', release: 'released', retry: 'scheduled for retry', delete: 'deleted', bounce: 'bounced' };

const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? '' : 's'}`;

export function formatAction(action: ActionName, res: ApplyActionResponse): string {
  const what = `${plural(res.messages, 'message')} (${plural(res.recipients, 'recipient')})`;
  return res.dryRun ? `Dry run: would ${action} ${what}. Nothing changed.\n` : `${what[0]!.toUpperCase()}${what.slice(1)} ${PAST[action]}.\n`;
}

export function formatDestinations(ds: Destination[]): string {
  if (ds.length === 0) return 'No destinations.\n';
  return table(
    ['DESTINATION', 'STATUS', 'INFLIGHT', 'CONCURRENCY', 'LAST ERROR'],
    ds.map((d) => [
      d.name,
      d.suspended ? `suspended${d.suspendedReason ? ` (${truncate(d.suspendedReason, 40)})` : ''}` : 'active',
      String(d.inflight),
      String(d.concurrencyLimit),
      truncate(d.lastError, 60) || '-',
    ]),
  );
}

export const routeKind = (k: RouteKind) => enumName(RouteKind, 'ROUTE_KIND_', k);
export const tlsPolicy = (t: TlsPolicy) => (t === TlsPolicy.TLS_POLICY_UNSPECIFIED ? 'may' : enumName(TlsPolicy, 'TLS_POLICY_', t));

export function formatRoutes(routes: Route[]): string {
  if (routes.length === 0) return 'No routes: every domain is delivered by MX.\n';
  return table(
    ['DOMAIN', 'KIND', 'TARGET', 'TLS', 'AUTH'],
    routes.map((r) => [r.domain, routeKind(r.kind), r.target || '-', tlsPolicy(r.tls), r.authUser ? `${r.authUser} (secret ${r.authSecret})` : '-']),
  );
}

export function formatDomains(ds: Domain[]): string {
  if (ds.length === 0) return 'No domains.\n';
  return table(
    ['DOMAIN', 'KIND', 'CATCH-ALL', 'MAX SIZE', 'RECIPIENTS'],
    ds.map((d) => [
      d.name,
      enumName(DomainKind, 'DOMAIN_KIND_', d.kind),
      d.catchAll || '-',
      d.maxMessageSize ? bytes(d.maxMessageSize) : 'default',
      // How RCPT to a relay domain is checked (a local domain: its mailboxes and aliases).
      d.kind === DomainKind.DOMAIN_KIND_RELAY ? enumName(RecipientCheck, 'RECIPIENT_CHECK_', d.recipientCheck || RecipientCheck.RECIPIENT_CHECK_NONE) : '-',
    ]),
  );
}

export function formatMailboxes(ms: Mailbox[]): string {
  if (ms.length === 0) return 'No mailboxes.\n';
  return table(['MAILBOX', 'STATUS'], ms.map((m) => [m.address, m.enabled ? 'enabled' : 'disabled']));
}

export function formatAliases(as: Alias[]): string {
  if (as.length === 0) return 'No aliases.\n';
  return table(['ALIAS', 'TARGETS'], as.map((a) => [a.address, a.targets.join(', ')]));
}

export function formatUsers(us: User[]): string {
  if (us.length === 0) return 'No users.\n';
  return table(
    ['USER', 'STATUS', 'MAY RELAY', 'ALLOWED SENDERS'],
    us.map((u) => [u.username, u.enabled ? 'enabled' : 'disabled', u.mayRelay ? 'yes' : 'no', u.allowedSenders.join(', ') || '-']),
  );
}

/** Machine output: proto3 JSON (enum names, RFC 3339 times; default values omitted), two-space indented. */
export const json = (value: unknown) => JSON.stringify(value, null, 2) + '\n';

export function formatSuppressions(ss: Suppression[], nextPageToken: string): string {
  if (ss.length === 0) return 'No suppressed addresses.\n';
  const out = table(
    ['ADDRESS', 'SINCE', 'EXPIRES', 'QUEUE ID', 'REASON'],
    ss.map((x) => [x.address, iso(x.createdAt), iso(x.expiresAt), x.queueId || '-', x.reason || '-']),
  );
  return nextPageToken ? `${out}\nMore: --page-token ${nextPageToken}\n` : out;
}
