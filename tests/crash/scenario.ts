// Shared pieces of the crash tests (I3: any pod may be SIGKILLed, Postgres or
// NATS may restart, and the platform converges without loss):
//
// - startWorld(): DNS, two SMTP sinks (the recipients' MX and the senders'
//   MX, where reports arrive), NATS, the six services with short knobs;
// - Load: a steady stream of messages from a few concurrent SMTP clients,
//   with a ledger of what got 250, 4xx, or an unclear ending;
// - crash(): SIGKILL some services (recording how many recipients were in
//   flight at that moment), restart them;
// - converge(): waits until every recipient that got a 250 ends delivered at
//   the sink or bounced with a report at the sender's sink, and the queue has
//   nothing pending; returns the tally (delivered, bounced, lost, duplicates),
//   with the sinks as the ground truth and Postgres as supporting evidence.
import assert from 'node:assert/strict';
import nodemailer from 'nodemailer';
import pg from 'pg';
import { startPlatform, type DnsServer, type Harness, type NatsServerHandle, type Platform, type ServiceHandle, type ServiceName, type SmtpSink } from '@tern/devkit';

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Recipient states (services/queue/migrations: RecipientState numbers). */
export const STATE: Record<number, string> = { 1: 'queued', 2: 'inflight', 3: 'deferred', 4: 'delivered', 5: 'failed', 6: 'held', 7: 'expired', 8: 'deleted', 9: 'relayed' };

/**
 * Short knobs so that the platform converges within the test:
 * - lease 15 s: a job whose delivery (or whose result's consumer) was killed
 *   comes back after 15 s instead of 15 minutes, yet no healthy job on
 *   loopback (milliseconds) comes near it;
 * - backoff 1-2 s: deferrals (the flaky recipients, failures while a
 *   dependency restarts) retry quickly;
 * - a dead destination is probed every 2 s;
 * - bounce retries the queue after 0.5-2 s;
 * - delivery gives up on a silent SMTP peer or queue after 5-10 s.
 */
export const CRASH_ENV: Partial<Record<ServiceName, Record<string, string>>> = {
  queue: {
    TERN_QUEUE_LEASE_S: '15',
    TERN_QUEUE_BACKOFF_MIN_S: '1',
    TERN_QUEUE_BACKOFF_MAX_S: '2',
    TERN_QUEUE_BACKOFF_JITTER: '0.1',
    TERN_QUEUE_SCHEDULE_INTERVAL_MS: '250',
    TERN_QUEUE_DEST_PROBE_S: '2',
    TERN_QUEUE_DEST_CONCURRENCY_INIT: '10',
    TERN_QUEUE_DEST_CONCURRENCY_MAX: '20',
  },
  bounce: {
    TERN_BOUNCE_RETRY_MIN_MS: '500',
    TERN_BOUNCE_RETRY_MAX_MS: '2000',
    TERN_QUEUE_DEADLINE_MS: '10000',
  },
  // Short SMTP and queue deadlines: a session cut by a crash fails fast.
  delivery: {
    TERN_SMTP_CONNECT_TIMEOUT_MS: '5000',
    TERN_SMTP_COMMAND_TIMEOUT_MS: '10000',
    TERN_SMTP_DATA_END_TIMEOUT_MS: '10000',
    TERN_QUEUE_DEADLINE_MS: '10000',
  },
};

export interface World {
  harness: Harness;
  platform: Platform;
  nats: NatsServerHandle;
  dns: DnsServer;
  /** MX of dest.test and other.test. */
  destMx: SmtpSink;
  /** MX of sender.test: reports arrive here. */
  senderMx: SmtpSink;
  databaseUrl: string;
  /** Pool on the queue's database (for evidence; tolerant of Postgres restarts). */
  db: pg.Pool;
  /** Services started besides the platform's (a second replica ...): watched for unexpected exits too. */
  extra: ServiceHandle[];
}

/** Services that are not running although nobody stopped them (they crashed by themselves). */
export function deadServices(world: World): string[] {
  return [...Object.values(world.platform.services), ...world.extra]
    .filter((s) => !s.running)
    .map((s) => `${s.name} (pid ${s.pid}) is not running; log: ${s.logFile}\n${s.log().split('\n').filter((l) => /"(fatal|error)"|"level":(50|60)|exited/.test(l)).slice(-5).join('\n').slice(0, 3000)}`);
}

export interface WorldOptions {
  databaseUrl: string;
  /** Loopback addresses of the two sinks (distinct per test file). */
  destHost: string;
  senderHost: string;
  env?: Partial<Record<ServiceName, Record<string, string>>>;
}

function mergeEnv(...envs: (Partial<Record<ServiceName, Record<string, string>>> | undefined)[]) {
  const out: Partial<Record<ServiceName, Record<string, string>>> = {};
  for (const e of envs) for (const [k, v] of Object.entries(e ?? {})) out[k as ServiceName] = { ...out[k as ServiceName], ...v };
  return out;
}

export async function startWorld(harness: Harness, opts: WorldOptions): Promise<World> {
  const nats = await harness.startNats();
  const port = await harness.freePort(opts.destHost);
  const destMx = await harness.startSink({ host: opts.destHost, port, hostname: 'mx.dest.test' });
  const senderMx = await harness.startSink({ host: opts.senderHost, port, hostname: 'mx.sender.test' });
  // flaky-* recipients: 451 the first time, accepted afterwards (a deferral and a retry each).
  const seenFlaky = new Set<string>();
  destMx.setBehaviour({
    rcpt: (to) => {
      const a = to.toLowerCase();
      if (!a.startsWith('flaky-') || seenFlaky.has(a)) return undefined;
      seenFlaky.add(a);
      return { code: 451, text: '4.7.1 greylisted, try again' };
    },
  });
  const dns = await harness.startDns({ host: '127.0.0.1' });
  dns.mx('dest.test', 'mx.dest.test').mx('other.test', 'mx.dest.test').a('mx.dest.test', opts.destHost);
  dns.mx('sender.test', 'mx.sender.test').a('mx.sender.test', opts.senderHost);

  const env = mergeEnv(CRASH_ENV, opts.env);
  const platform = await startPlatform(harness, {
    databaseUrl: opts.databaseUrl,
    natsUrl: nats.url,
    dnsServer: dns.address,
    remoteSmtpPort: port,
    env,
  });
  const db = new pg.Pool({ connectionString: opts.databaseUrl, max: 4, connectionTimeoutMillis: 3_000 });
  db.on('error', () => undefined); // idle clients die with a Postgres restart
  harness.defer(() => db.end(), 'end evidence pool');
  return { harness, platform, nats, dns, destMx, senderMx, databaseUrl: opts.databaseUrl, db, extra: [] };
}

// ------------------------------------------------------------------ load

export interface Sent {
  n: number;
  sender: string;
  messageId: string;
  /** The recipients the platform took (for an accepted message, those its RCPTs accepted). */
  rcpts: string[];
  /** accepted: 250 with a queue id; refused: 4xx/5xx; uncertain: the session ended without a reply to DATA. */
  outcome: 'accepted' | 'refused' | 'uncertain';
  reply: string;
  queueId?: string;
  at: number;
}

/** What must become of a recipient: permfail-* are refused with 550 by the sink and must bounce. */
export function expectedFate(rcpt: string): 'delivered' | 'bounced' {
  return rcpt.toLowerCase().startsWith('permfail') ? 'bounced' : 'delivered';
}

/** Recipients of message n: mixes two destinations, permanent failures and a greylisting sink. */
export function recipientsOf(tag: string, n: number): string[] {
  const r = [`u${tag}${n}@dest.test`];
  if (n % 3 === 0) r.push(`v${tag}${n}@other.test`);
  if (n % 5 === 0) r.push(`permfail-${tag}${n}@dest.test`);
  if (n % 7 === 0) r.push(`flaky-${tag}${n}@dest.test`);
  if (n % 13 === 0) r.push(`permfail-o${tag}${n}@other.test`);
  return r;
}

export interface LoadOptions {
  tag: string;
  /** Concurrent SMTP clients. */
  clients: number;
  /** Messages per second, all clients together (roughly). */
  ratePerSec: number;
  /** Ingress listeners to spread the clients over (default: the platform's). */
  targets?: { host: string; port: number }[];
}

export class Load {
  readonly sent: Sent[] = [];
  private n = 0;
  private running = false;
  private loops: Promise<void>[] = [];

  constructor(
    private readonly world: World,
    private readonly o: LoadOptions,
  ) {}

  start(): void {
    this.running = true;
    const targets = this.o.targets ?? [{ host: this.world.platform.smtpHost, port: this.world.platform.smtpPort }];
    const interval = (1000 * this.o.clients) / this.o.ratePerSec;
    for (let c = 0; c < this.o.clients; c++) this.loops.push(this.client(targets[c % targets.length]!, interval));
  }

  async stop(): Promise<void> {
    this.running = false;
    await Promise.all(this.loops);
  }

  /** Sends exactly `count` messages (not paced), `clients` at a time. */
  async burst(count: number): Promise<void> {
    const targets = this.o.targets ?? [{ host: this.world.platform.smtpHost, port: this.world.platform.smtpPort }];
    let left = count;
    await Promise.all(
      Array.from({ length: this.o.clients }, async (_x, c) => {
        while (left > 0) {
          left--;
          await this.sendOne(targets[c % targets.length]!);
        }
      }),
    );
  }

  private async client(target: { host: string; port: number }, interval: number): Promise<void> {
    await sleep(Math.random() * interval);
    while (this.running) {
      const t0 = Date.now();
      await this.sendOne(target);
      await sleep(Math.max(0, interval - (Date.now() - t0)));
    }
  }

  private async sendOne(target: { host: string; port: number }): Promise<void> {
    const n = ++this.n;
    const tag = this.o.tag;
    const sender = `s${tag}${n}@sender.test`;
    const messageId = `<crash-${tag}-${n}@sender.test>`;
    const rcpts = recipientsOf(tag, n);
    const raw =
      `From: ${sender}\r\nTo: ${rcpts.join(', ')}\r\nSubject: crash test ${tag} ${n}\r\nMessage-ID: ${messageId}\r\n` +
      `Date: ${new Date().toUTCString()}\r\n\r\nMessage ${n} of the crash test.\r\n${'x'.repeat(200)}\r\n`;
    const transport = nodemailer.createTransport({
      host: target.host,
      port: target.port,
      secure: false,
      ignoreTLS: true,
      name: 'client.example',
      connectionTimeout: 10_000,
      greetingTimeout: 10_000,
      socketTimeout: 30_000,
    } as Parameters<typeof nodemailer.createTransport>[0]);
    const entry: Sent = { n, sender, messageId, rcpts, outcome: 'uncertain', reply: '', at: Date.now() };
    this.sent.push(entry);
    try {
      const info = await transport.sendMail({ envelope: { from: sender, to: rcpts }, raw });
      entry.reply = info.response;
      const m = /^250 2\.0\.0 Ok: queued as (\S+)/.exec(info.response.trim());
      if (m) {
        entry.outcome = 'accepted';
        entry.queueId = m[1];
        // A recipient refused at RCPT (451 4.3.0 while policy cannot read its
        // tables, e.g. Postgres recovering) stays the client's: nodemailer sends
        // to the others and lists it in `rejected`.
        const accepted = new Set((info.accepted as string[]).map((a) => a.toLowerCase()));
        entry.rcpts = rcpts.filter((r) => accepted.has(r.toLowerCase()));
      }
    } catch (err) {
      const e = err as { responseCode?: number; response?: string; message: string; command?: string };
      entry.reply = e.response ?? e.message;
      // A reply (4xx/5xx) at any stage: the client keeps its copy. No reply
      // (connection cut, timeout) after DATA was sent: the platform may or
      // may not have it; such messages are neither required nor counted as extras.
      if (e.responseCode !== undefined && e.responseCode >= 400) entry.outcome = 'refused';
    } finally {
      transport.close();
    }
  }

  get accepted(): Sent[] {
    return this.sent.filter((s) => s.outcome === 'accepted');
  }
}

// ----------------------------------------------------------------- crashes

export interface CrashRecord {
  what: string;
  at: number;
  /** Recipients in state inflight at the moment of the crash (-1: unknown, Postgres down). */
  inflight: number;
  /** How long until everything was back up (ms). */
  downMs: number;
  /** Whether this crash can cause a duplicate delivery (it cut a job or a result between a remote 250 and its recording). */
  dupWindow: boolean;
}

/** The duplicate bound: recipients in flight at the crashes that can cut a job or a result (see assertConverged). */
export function duplicateBound(crashes: CrashRecord[]): number {
  return crashes.filter((c) => c.dupWindow).reduce((a, c) => a + Math.max(0, c.inflight), 0);
}

export async function inflightNow(world: World): Promise<number> {
  try {
    const { rows } = await world.db.query<{ n: string }>('SELECT count(*) AS n FROM queue.recipients WHERE state = 2');
    return Number(rows[0]!.n);
  } catch {
    return -1;
  }
}

/** SIGKILLs the services together, waits `downMs`, starts them again (owners first). */
export async function crash(world: World, names: ServiceName[], log: CrashRecord[], downMs = 1_000): Promise<void> {
  const inflight = await inflightNow(world);
  const at = Date.now();
  await Promise.all(names.map((n) => world.platform.services[n].kill()));
  await sleep(downMs);
  const order: ServiceName[] = ['policy', 'queue', 'delivery', 'bounce', 'admin', 'ingress'];
  for (const n of order) if (names.includes(n)) await world.platform.services[n].restart();
  // bounce alone holds no job and no delivery result: it cannot cause a duplicate delivery.
  const dupWindow = names.some((n) => n === 'queue' || n === 'delivery');
  log.push({ what: `SIGKILL ${names.join('+')}`, at, inflight, downMs: Date.now() - at, dupWindow });
}

/** Kills NATS (SIGKILL) and starts it again on the same port and store. */
export async function crashNats(world: World, log: CrashRecord[], downMs = 1_000): Promise<void> {
  const inflight = await inflightNow(world);
  const at = Date.now();
  await world.nats.kill();
  await sleep(downMs);
  await world.nats.restart();
  log.push({ what: 'SIGKILL nats-server, restart on the same store', at, inflight, downMs: Date.now() - at, dupWindow: true });
}

// ----------------------------------------------------------------- tally

export interface Tally {
  accepted: number;
  acceptedRecipients: number;
  refused: number;
  uncertain: number;
  delivered: number;
  bounced: number;
  lost: string[];
  /** Recipients whose fate was not the expected one (e.g. an ok recipient bounced). */
  wrong: string[];
  /** The same Message-ID delivered to the same recipient more than once (extra copies). */
  deliveryDuplicates: number;
  duplicateKeys: string[];
  /** The same report (Message-ID) delivered to the same address more than once. */
  reportDuplicates: number;
  /** Recipients (any message, reports included) not final in Postgres. */
  pending: number;
  outbox: number;
  /** Accepted recipients by Postgres state name. */
  states: Record<string, number>;
  /** Accepted messages the queue has no record of (an I1 violation). */
  unknownToQueue: string[];
}

const messageIdOf = (raw: string) => /^Message-ID:\s*(<[^>\r\n]+>)/im.exec(raw.slice(0, Math.max(0, raw.indexOf('\r\n\r\n')) || raw.length))?.[1];

export async function tally(world: World, sent: Sent[]): Promise<Tally> {
  // Deliveries at the recipients' MX: Message-ID x envelope recipient.
  const deliveries = new Map<string, number>();
  for (const m of world.destMx.messages) {
    const mid = messageIdOf(m.raw.toString('latin1')) ?? `(no Message-ID, sink id ${m.id})`;
    for (const r of m.rcptTo) {
      const k = `${mid} ${r.toLowerCase()}`;
      deliveries.set(k, (deliveries.get(k) ?? 0) + 1);
    }
  }
  // Reports at the senders' MX: which original (Message-ID) and which failed recipients they report.
  const reported = new Map<string, number>();
  const reportCopies = new Map<string, number>();
  for (const m of world.senderMx.messages) {
    const raw = m.raw.toString('latin1');
    const own = messageIdOf(raw) ?? m.id;
    for (const r of m.rcptTo) reportCopies.set(`${own} ${r.toLowerCase()}`, (reportCopies.get(`${own} ${r.toLowerCase()}`) ?? 0) + 1);
    if (m.mailFrom !== '') continue;
    const orig = /Message-ID:\s*(<crash-[^>\r\n]+>)/i.exec(raw)?.[1];
    if (!orig) continue;
    for (const f of raw.matchAll(/^Final-Recipient:\s*rfc822;\s*(\S+)/gim)) {
      const k = `${orig} ${f[1]!.toLowerCase()}`;
      reported.set(k, (reported.get(k) ?? 0) + 1);
    }
  }

  const accepted = sent.filter((s) => s.outcome === 'accepted');
  const t: Tally = {
    accepted: accepted.length,
    acceptedRecipients: 0,
    refused: sent.filter((s) => s.outcome === 'refused').length,
    uncertain: sent.filter((s) => s.outcome === 'uncertain').length,
    delivered: 0,
    bounced: 0,
    lost: [],
    wrong: [],
    deliveryDuplicates: 0,
    duplicateKeys: [],
    reportDuplicates: 0,
    pending: -1,
    outbox: -1,
    states: {},
    unknownToQueue: [],
  };
  for (const s of accepted) {
    for (const r of s.rcpts) {
      t.acceptedRecipients++;
      const k = `${s.messageId} ${r.toLowerCase()}`;
      const d = deliveries.get(k) ?? 0;
      const b = reported.get(k) ?? 0;
      if (expectedFate(r) === 'delivered') {
        if (d > 0) t.delivered++;
        else if (b > 0) t.wrong.push(`${k} (${s.queueId}): bounced, expected delivered`);
        else t.lost.push(`${k} (${s.queueId})`);
      } else {
        if (b > 0) t.bounced++;
        else if (d > 0) t.wrong.push(`${k} (${s.queueId}): delivered, expected a bounce`);
        else t.lost.push(`${k} (${s.queueId})`);
      }
    }
  }
  for (const [k, c] of deliveries) {
    if (c > 1) {
      t.deliveryDuplicates += c - 1;
      t.duplicateKeys.push(`${k} x${c}`);
    }
  }
  for (const [k, c] of reportCopies) {
    if (c > 1) {
      t.reportDuplicates += c - 1;
      t.duplicateKeys.push(`report ${k} x${c}`);
    }
  }

  // Postgres: supporting evidence.
  try {
    const ids = accepted.map((s) => s.queueId!);
    const { rows } = await world.db.query<{ state: number; n: string }>(
      'SELECT state, count(*) AS n FROM queue.recipients WHERE message_id = ANY($1::text[]) GROUP BY state',
      [ids],
    );
    for (const r of rows) t.states[STATE[r.state] ?? String(r.state)] = Number(r.n);
    const known = await world.db.query<{ id: string }>('SELECT id FROM queue.messages WHERE id = ANY($1::text[])', [ids]);
    const knownSet = new Set(known.rows.map((r) => r.id));
    t.unknownToQueue = accepted.filter((s) => !knownSet.has(s.queueId!)).map((s) => `${s.messageId} ${s.queueId}`);
    const p = await world.db.query<{ n: string }>('SELECT count(*) AS n FROM queue.recipients WHERE state IN (1, 2, 3)');
    t.pending = Number(p.rows[0]!.n);
    const o = await world.db.query<{ n: string }>('SELECT count(*) AS n FROM queue.outbox');
    t.outbox = Number(o.rows[0]!.n);
  } catch {
    /* Postgres not reachable right now: no evidence this round */
  }
  return t;
}

/**
 * Waits until every accepted recipient met its fate at the sinks and the
 * queue has nothing pending or unpublished; then a few seconds more to catch
 * late duplicates. Returns the last tally either way (the caller asserts).
 */
export async function converge(world: World, sent: Sent[], timeoutMs: number): Promise<Tally & { convergedMs: number }> {
  const t0 = Date.now();
  let t = await tally(world, sent);
  while (Date.now() - t0 < timeoutMs) {
    // A process that died by itself will not come back here (no kubelet): say so now.
    const dead = deadServices(world);
    if (dead.length) assert.fail(`a service died by itself during the test:\n${dead.join('\n')}`);
    if (!t.lost.length && t.pending === 0 && t.outbox === 0) {
      const convergedMs = Date.now() - t0;
      await sleep(3_000);
      return { ...(await tally(world, sent)), convergedMs };
    }
    await sleep(1_000);
    t = await tally(world, sent);
  }
  return { ...t, convergedMs: -1 };
}

/** Why recipients are not final: state, attempts and last reply from Postgres. */
export async function explainLost(world: World, sent: Sent[], lost: string[], limit = 20): Promise<string> {
  const byKey = new Map<string, Sent>();
  for (const s of sent) for (const r of s.rcpts) byKey.set(`${s.messageId} ${r.toLowerCase()}`, s);
  const lines: string[] = [];
  for (const l of lost.slice(0, limit)) {
    const [mid, rcpt] = l.split(' ');
    const s = byKey.get(`${mid} ${rcpt}`);
    if (!s?.queueId) {
      lines.push(`${l}: no queue id`);
      continue;
    }
    try {
      const { rows } = await world.db.query<{ state: number; attempt_count: number; last_code: number | null; last_text: string | null; job_id: string | null; lease_expires_at: Date | null; next_attempt_at: Date | null }>(
        'SELECT state, attempt_count, last_code, last_text, job_id, lease_expires_at, next_attempt_at FROM queue.recipients WHERE message_id = $1 AND lower(address) = $2',
        [s.queueId, rcpt],
      );
      const r = rows[0];
      lines.push(
        r
          ? `${l}: state ${STATE[r.state]}, attempts ${r.attempt_count}, last ${r.last_code ?? '-'} ${r.last_text ?? ''}, job ${r.job_id ?? '-'}, lease ${r.lease_expires_at?.toISOString() ?? '-'}, next ${r.next_attempt_at?.toISOString() ?? '-'}`
          : `${l}: no recipient row in the queue`,
      );
    } catch (err) {
      lines.push(`${l}: (Postgres: ${(err as Error).message})`);
    }
  }
  if (lost.length > limit) lines.push(`... and ${lost.length - limit} more`);
  return lines.join('\n');
}

export function summary(name: string, t: Tally & { convergedMs: number }, crashes: CrashRecord[], ms: number): string {
  const bound = duplicateBound(crashes);
  return [
    `[crash] ${name}: ${t.accepted} messages accepted (${t.acceptedRecipients} recipients), ${t.refused} refused (4xx/5xx), ${t.uncertain} uncertain`,
    `[crash]   delivered ${t.delivered}, bounced ${t.bounced}, lost ${t.lost.length}, wrong ${t.wrong.length}, delivery duplicates ${t.deliveryDuplicates} (bound ${bound}), report duplicates ${t.reportDuplicates}`,
    `[crash]   Postgres: ${JSON.stringify(t.states)}, pending ${t.pending}, outbox ${t.outbox}; converged ${t.convergedMs >= 0 ? `${(t.convergedMs / 1000).toFixed(1)} s after the load` : 'NOT within the deadline'}; total ${(ms / 1000).toFixed(1)} s`,
    ...crashes.map((c) => `[crash]   ${new Date(c.at).toISOString()} ${c.what}: ${c.inflight} recipients in flight, back after ${c.downMs} ms`),
    ...(t.duplicateKeys.length ? [`[crash]   duplicates: ${t.duplicateKeys.slice(0, 10).join('; ')}${t.duplicateKeys.length > 10 ? ' ...' : ''}`] : []),
  ].join('\n');
}

/** The assertions every crash scenario makes. */
export async function assertConverged(world: World, load: Load, t: Tally & { convergedMs: number }, crashes: CrashRecord[]): Promise<void> {
  assert.deepEqual(deadServices(world), [], 'no service died by itself');
  assert.ok(t.accepted > 0, 'some messages were accepted');
  assert.deepEqual(t.unknownToQueue, [], 'every 250 names a message the queue has (I1)');
  if (t.lost.length) assert.fail(`${t.lost.length} accepted recipients lost (I2):\n${await explainLost(world, load.sent, t.lost)}`);
  assert.deepEqual(t.wrong, [], 'every recipient met the fate its local part asks for');
  assert.equal(t.pending, 0, 'nothing pending in the queue (reports included)');
  assert.equal(t.outbox, 0, 'the outbox is empty');
  assert.equal(t.states.delivered ?? 0, t.delivered, 'Postgres: the recipients delivered at the sink are delivered');
  assert.equal(t.states.failed ?? 0, t.bounced, 'Postgres: the bounced recipients are failed');
  // Duplicates are allowed only between a remote 250 and recording it. A
  // recipient can only be delivered twice if the result of its first
  // delivery was never applied, i.e. it was `inflight` (dispatched, result
  // not yet applied) when a process holding its job or its result died
  // (queue, delivery, NATS, Postgres; bounce holds neither): so the extra
  // copies, of messages and of reports alike, are at most the recipients
  // in flight at those crash moments, summed. With no such crash: zero.
  const bound = duplicateBound(crashes);
  const dups = t.deliveryDuplicates + t.reportDuplicates;
  assert.ok(dups <= bound, `duplicates ${dups} <= recipients in flight at the crashes ${bound}: ${t.duplicateKeys.join('; ')}`);
}
