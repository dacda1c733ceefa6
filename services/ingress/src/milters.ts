// Content filters (milters) at the end of data. The chain is policy data
// (PolicyService.ListMilters, read every TERN_MILTER_REFRESH_MS by
// MilterDirectory); runMilterChain runs it over one spooled message: each
// milter in order gets the whole conversation at once (connect, HELO, MAIL,
// RCPT, headers, body, end of message) and sees the message as the milters
// before it left it. Its changes count only when its final answer lets the
// message through; a milter that fails (no connection, timeout, protocol
// error) gets its default action. The caller stores what comes out, and
// only then answers 250 (I1).
import { MilterDefaultAction, Listener, type Milter, type EnvelopeRecipient } from '@tern/proto';
import {
  applyHeaderChange,
  converse,
  MilterError,
  MilterSession,
  parseHeaderSection,
  parseReplyText,
  type HeaderField,
  type Modification,
  type Verdict,
} from '@tern/milter';
import { parseAddress, type Reply } from '@tern/smtp';
import { untraced, type Logger } from '@tern/telemetry';
import type { Counter, Histogram } from '@opentelemetry/api';
import { call, type PolicyClient } from './clients';
import { Spool } from './spool';
import { errorMessage } from '@tern/runtime';

export type DefaultAction = 'tempfail' | 'accept' | 'reject';

export interface MilterDef {
  name: string;
  address: string;
  listeners: ReadonlySet<string>;
  connectTimeoutMs: number;
  commandTimeoutMs: number;
  totalTimeoutMs: number;
  defaultAction: DefaultAction;
}

const LISTENER_NAMES: Partial<Record<Listener, string>> = {
  [Listener.LISTENER_MX]: 'mx',
  [Listener.LISTENER_SUBMISSION]: 'submission',
  [Listener.LISTENER_SUBMISSIONS]: 'submissions',
};

function toDef(m: Milter): MilterDef {
  return {
    name: m.name,
    address: m.address,
    listeners: new Set(m.listeners.map((l) => LISTENER_NAMES[l]).filter((x): x is string => x !== undefined)),
    connectTimeoutMs: m.connectTimeoutMs || 10_000,
    commandTimeoutMs: m.commandTimeoutMs || 30_000,
    totalTimeoutMs: m.totalTimeoutMs || 300_000,
    defaultAction:
      m.defaultAction === MilterDefaultAction.MILTER_DEFAULT_ACTION_ACCEPT ? 'accept' : m.defaultAction === MilterDefaultAction.MILTER_DEFAULT_ACTION_REJECT ? 'reject' : 'tempfail',
  };
}

/**
 * The milter chain as policy has it, asked every `refreshMs`. Until the
 * first answer the chain is unknown and messages on every listener get
 * 451 4.3.0 (a filter an operator set up is never skipped unnoticed); a
 * policy without ListMilters (UNIMPLEMENTED, an older release mid-upgrade)
 * means no milters. After that a failed refresh keeps the last list.
 */
export class MilterDirectory {
  private list: MilterDef[] | undefined;
  private timer: NodeJS.Timeout | undefined;
  private inflight: Promise<void> | undefined;
  private failing = false;

  constructor(
    private readonly policy: PolicyClient,
    private readonly refreshMs: number,
    private readonly deadlineMs: number,
    private readonly logger: Logger,
  ) {}

  start(): void {
    void this.refresh();
    this.timer = setInterval(() => void this.refresh(), this.refreshMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
  }

  /** The chain for a listener, in order; undefined while not yet known. */
  forListener(listener: string): MilterDef[] | undefined {
    return this.list?.filter((m) => m.listeners.has(listener));
  }

  refresh(): Promise<void> {
    // Background work for no one message: no trace of its own (queue-gate.ts does the same).
    this.inflight ??= untraced(() => this.ask()).finally(() => (this.inflight = undefined));
    return this.inflight;
  }

  private async ask(): Promise<void> {
    try {
      const res = await call(this.policy.listMilters, this.policy, {}, this.deadlineMs);
      // Chain order, whatever order the answer has.
      const next = [...res.milters].sort((x, y) => x.order - y.order || (x.name < y.name ? -1 : x.name > y.name ? 1 : 0)).map(toDef);
      const before = JSON.stringify(this.list?.map((m) => ({ ...m, listeners: [...m.listeners] })));
      const after = JSON.stringify(next.map((m) => ({ ...m, listeners: [...m.listeners] })));
      if (before !== after) this.logger.info({ event: 'milters_loaded', milters: next.map((m) => `${m.name}=${m.address}[${[...m.listeners].join(',')}]/${m.defaultAction}`) }, `milter chain: ${next.length} milters`);
      this.list = next;
      this.failing = false;
    } catch (err) {
      if ((err as { code?: number }).code === 12 /* UNIMPLEMENTED */) {
        if (this.list === undefined) this.logger.info('policy has no ListMilters (an older release): no milters');
        this.list ??= [];
        return;
      }
      if (!this.failing) this.logger.warn({ err: errorMessage(err), known: this.list !== undefined }, 'reading the milter chain from policy failed; keeping the last one (none known yet: messages get 451 4.3.0)');
      this.failing = true;
    }
  }
}

export interface MilterMetrics {
  calls: Counter;
  seconds: Histogram;
}

/** Postfix's words for the plain verdicts. */
export const MilterReplies = {
  reject: { code: 550, enhanced: '5.7.1', text: 'Command rejected' },
  tempfail: { code: 451, enhanced: '4.7.1', text: 'Service unavailable - try again later' },
  /** A milter that failed with default tempfail: a fault of ours, not the client's. */
  failed: { code: 451, enhanced: '4.7.1', text: 'Service unavailable - try again later', ourFault: true },
} satisfies Record<string, Reply>;

export interface ChainInput {
  hostname: string;
  listener: string;
  /** Sendmail's `i` macro: there is no queue id before the commit, so the session id and the transaction number. */
  messageId: string;
  client: { name: string; address: string; port: number };
  helo: string;
  tls?: { protocol: string; cipher: string; bits?: number };
  authUser?: string;
  sender: string;
  recipients: EnvelopeRecipient[];
  /** The message as it would be stored (Received on top). */
  spool: Spool;
  spoolDir: string;
  spoolMemory: number;
  /** A replacement body over this is a protocol error. */
  maxBody: number;
}

export type ChainOutcome =
  | { kind: 'refuse'; reply: Reply; milter: string; why: string }
  | { kind: 'discard'; milter: string; why: string }
  | {
      kind: 'pass';
      /** The message to store: these header fields, the blank line if there was one, then `body` from `bodyStart`. */
      headers: HeaderField[];
      blankLine: boolean;
      body: Spool;
      bodyStart: number;
      sender: string;
      recipients: EnvelopeRecipient[];
      quarantine: string[];
      /** Spools made for replacement bodies, to close after use. */
      extra: Spool[];
    };

/** The header section is held in memory up to this; what lies beyond is body to the milters. */
export const MAX_HEADER_BYTES = 256 * 1024;

interface State {
  headers: HeaderField[];
  blankLine: boolean;
  body: Spool;
  bodyStart: number;
  sender: string;
  recipients: EnvelopeRecipient[];
  quarantine: string[];
}

/** A milter's address as UTF-8 (the protocol carries octets), checked; undefined when it is not one. */
function milterAddress(octets: string, nullOk: boolean): string | undefined {
  const a = Buffer.from(octets, 'latin1').toString('utf8');
  if (a === '' && nullOk) return '';
  const r = parseAddress(a, { utf8: true });
  return r.ok ? r.address.address : undefined;
}

export async function runMilterChain(milters: readonly MilterDef[], input: ChainInput, metrics: MilterMetrics, logger: Logger): Promise<ChainOutcome> {
  const extra: Spool[] = [];
  try {
    const out = await chain(milters, input, metrics, logger, extra);
    if (out.kind !== 'pass') await Promise.all(extra.map((x) => x.close()));
    return out;
  } catch (err) {
    await Promise.all(extra.map((x) => x.close()));
    throw err;
  }
}

async function chain(milters: readonly MilterDef[], input: ChainInput, metrics: MilterMetrics, logger: Logger, extra: Spool[]): Promise<ChainOutcome> {
  const head = await input.spool.head(MAX_HEADER_BYTES);
  const parsed = parseHeaderSection(head);
  let state: State = {
    headers: parsed.fields,
    blankLine: parsed.blankLine,
    body: input.spool,
    bodyStart: parsed.bodyStart,
    sender: input.sender,
    recipients: input.recipients.map((r) => ({ ...r, notify: [...r.notify] })),
    quarantine: [],
  };
  const macros = (stage: string, rcpt?: string): Record<string, string | undefined> | undefined => {
    switch (stage) {
      case 'C':
        return {
          j: input.hostname,
          '{daemon_name}': input.listener,
          _: `${input.client.name} [${input.client.address}]`,
          '{client_addr}': input.client.address,
          '{client_port}': String(input.client.port),
          '{client_name}': input.client.name,
        };
      case 'H':
        return input.tls ? { '{tls_version}': input.tls.protocol, '{cipher}': input.tls.cipher, '{cipher_bits}': input.tls.bits ? String(input.tls.bits) : undefined } : undefined;
      case 'M':
        return { i: input.messageId, '{mail_addr}': state.sender, '{auth_authen}': input.authUser, '{auth_type}': input.authUser ? 'PLAIN' : undefined };
      case 'R':
        return { '{rcpt_addr}': rcpt };
      case 'E':
        return { i: input.messageId };
      default:
        return undefined;
    }
  };

  for (const m of milters) {
    const started = performance.now();
    const next: State = { ...state, headers: state.headers.map((f) => ({ ...f })), recipients: state.recipients.map((r) => ({ ...r })), quarantine: [...state.quarantine] };
    let replacement: Spool | undefined;
    let verdict: Verdict | undefined;
    let failure: Error | undefined;
    let session: MilterSession | undefined;
    let totalTimer: NodeJS.Timeout | undefined;
    const current = state;
    try {
      session = await MilterSession.connect(m.address, { connectMs: m.connectTimeoutMs, commandMs: m.commandTimeoutMs });
      const s = session;
      totalTimer = setTimeout(() => s.destroy(new MilterError('timeout', `milter ${m.address}: conversation longer than ${m.totalTimeoutMs} ms`)), m.totalTimeoutMs);
      const onModification = async (mod: Modification) => {
        switch (mod.type) {
          case 'addheader':
          case 'insheader':
          case 'chgheader':
            applyHeaderChange(next.headers, mod);
            return;
          case 'replbody':
            if (!replacement) {
              replacement = new Spool(input.spoolDir, input.spoolMemory);
              extra.push(replacement);
            }
            if (replacement.size + mod.chunk.length > input.maxBody) throw new MilterError('protocol', `milter ${m.address}: replacement body over ${input.maxBody} octets`);
            await replacement.write(mod.chunk);
            return;
          case 'addrcpt': {
            const address = milterAddress(mod.address, false);
            if (address === undefined) throw new MilterError('protocol', `milter ${m.address}: "${mod.address.slice(0, 100)}" is not an address to add`);
            if (!next.recipients.some((r) => r.address.toLowerCase() === address.toLowerCase())) next.recipients.push({ address, orcpt: '', notify: [] });
            return;
          }
          case 'delrcpt': {
            const address = Buffer.from(mod.address, 'latin1').toString('utf8').toLowerCase();
            next.recipients = next.recipients.filter((r) => r.address.toLowerCase() !== address);
            return;
          }
          case 'chgfrom': {
            const address = milterAddress(mod.address, true);
            if (address === undefined) throw new MilterError('protocol', `milter ${m.address}: "${mod.address.slice(0, 100)}" is not a sender`);
            next.sender = address;
            return;
          }
          case 'quarantine':
            next.quarantine.push(mod.reason || m.name);
            return;
        }
      };
      verdict = await converse(
        s,
        {
          client: input.client,
          helo: input.helo,
          sender: current.sender,
          recipients: current.recipients.map((r) => r.address),
          headers: current.headers,
          body: () => current.body.read(current.bodyStart),
          macros,
        },
        onModification,
      );
    } catch (err) {
      failure = err as Error;
    } finally {
      clearTimeout(totalTimer);
      await session?.quit();
    }
    const seconds = (performance.now() - started) / 1000;
    metrics.seconds.record(seconds, { milter: m.name });
    const ms = Math.round(seconds * 1000);

    if (failure) {
      metrics.calls.add(1, { milter: m.name, result: 'error' });
      logger.warn({ event: 'milter_failed', milter: m.name, address: m.address, err: failure.message, default_action: m.defaultAction, ms }, `milter ${m.name} failed; default action ${m.defaultAction}`);
      if (m.defaultAction === 'accept') continue;
      const why = `milter ${m.name} failed (${failure.message}); default action ${m.defaultAction}`;
      return { kind: 'refuse', reply: m.defaultAction === 'reject' ? MilterReplies.reject : MilterReplies.failed, milter: m.name, why };
    }
    const v = verdict!;
    if (v.kind === 'continue' || v.kind === 'accept' || v.kind === 'skip') {
      metrics.calls.add(1, { milter: m.name, result: 'accept' });
      if (replacement) {
        next.body = replacement;
        next.bodyStart = 0;
      }
      state = next;
      logger.debug({ event: 'milter_passed', milter: m.name, verdict: v.kind, ms }, `milter ${m.name}: ${v.kind}`);
      continue;
    }
    if (v.kind === 'discard') {
      metrics.calls.add(1, { milter: m.name, result: 'discard' });
      return { kind: 'discard', milter: m.name, why: `milter ${m.name} discarded the message` };
    }
    let reply: Reply;
    if (v.kind === 'reply') {
      const r = parseReplyText(v.reply);
      reply = r.enhanced ? { code: r.code, enhanced: r.enhanced, text: r.text } : { code: r.code, text: r.text };
    } else reply = v.kind === 'reject' ? MilterReplies.reject : MilterReplies.tempfail;
    metrics.calls.add(1, { milter: m.name, result: reply.code >= 500 ? 'reject' : 'tempfail' });
    return { kind: 'refuse', reply, milter: m.name, why: `milter ${m.name} answered ${v.kind === 'reply' ? v.reply : v.kind}` };
  }
  return { kind: 'pass', ...state, extra };
}
