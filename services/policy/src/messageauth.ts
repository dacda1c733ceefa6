// Sender authentication with mailauth: SPF at MAIL (a hard fail is refused
// when configured), and at end of data DKIM, SPF, DMARC and ARC over the
// streamed message, written as an Authentication-Results header (RFC 8601).
// DMARC p=reject is enforced when configured, unless a trusted ARC sealer
// vouches for the message. Runs for inbound mail (MX listener, not
// authenticated).
import { Readable } from 'node:stream';
import type { authenticate } from 'mailauth';
import type { spf } from 'mailauth/lib/spf';
import { CheckStage, Listener, PolicyAction, type CheckMessageRequest, type CheckMessageResponse, type CheckRequest, type Header } from '@tern/proto';
import type { Logger } from '@tern/telemetry';
import { parseAddress } from './address';
import type { Snapshot } from './cache';
import type { Resolve } from './dns';
import type { Client } from './engine';
import { refuse, type Decision } from './replies';
import { errorMessage } from '@tern/runtime';

export interface MessageAuthOptions {
  resolver: Resolve;
  /** authserv-id in Authentication-Results, and the MTA name for SPF. */
  hostname: string;
  spfFailAction: 'reject' | 'none';
  dmarcEnforce: boolean;
  /** ARC sealing domains whose pass overrides a DMARC reject (mailing lists you trust). */
  arcTrustedSealers: string[];
  maxMessageSize: number;
  snapshot: () => Snapshot;
  logger: Logger;
  timeoutMs: number;
}

/**
 * mailauth, loaded at the first check that needs it, not at start: with what
 * it brings (undici, joi, the BIMI certificate parsers) it is 320 modules and
 * 11.7 MB of heap a process keeps, and a policy whose clients are all trusted
 * or authenticated never needs it. The first load takes 100-400 ms, once.
 */
let mailauth: Promise<{ authenticate: typeof authenticate; spf: typeof spf }> | undefined;
export const loadMailauth = () =>
  (mailauth ??= Promise.all([import('mailauth'), import('mailauth/lib/spf/index.js')]).then(([m, s]) => ({ authenticate: m.authenticate, spf: s.spf })));

const inbound = (client: Client, listener: Listener | undefined) =>
  !client.user && !client.submission && listener !== Listener.LISTENER_SUBMISSION && listener !== Listener.LISTENER_SUBMISSIONS;

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    p,
    new Promise<T>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what} took longer than ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/** Splits "Name: value\r\n Name2: ..." (folded lines kept) into headers. */
export function splitHeaders(block: string): Header[] {
  const out: Header[] = [];
  for (const line of block.split(/\r?\n(?![ \t])/)) {
    if (!line.trim()) continue;
    const colon = line.indexOf(':');
    if (colon <= 0) continue;
    out.push({ name: line.slice(0, colon), value: line.slice(colon + 1).replace(/^ /, '').replace(/\r?\n/g, '\r\n') });
  }
  return out;
}

export class MessageAuth {
  constructor(private readonly opts: MessageAuthOptions) {}

  /** Check hook: SPF at MAIL. */
  /** True when the hook does no lookup for this request (SPF applies to inbound, untrusted MAIL only). */
  pure = (req: CheckRequest, client: Client): boolean =>
    req.stage !== CheckStage.CHECK_STAGE_MAIL || this.opts.spfFailAction === 'none' || client.trusted || !inbound(client, req.session?.listener) || !client.address;

  hook = async (req: CheckRequest, client: Client, decision: Decision): Promise<Decision | undefined> => {
    if (decision.action !== PolicyAction.POLICY_ACTION_ACCEPT || this.pure(req, client)) return undefined;
    const ip = client.address;
    let result;
    try {
      const { spf } = await loadMailauth();
      result = await spf({
        sender: req.sender || undefined,
        ip,
        helo: req.session?.heloName,
        mta: this.opts.hostname,
        resolver: this.opts.resolver,
        maxElapsedTime: this.opts.timeoutMs,
      });
    } catch (err) {
      this.opts.logger.warn({ err: errorMessage(err) }, 'SPF check failed');
      return undefined;
    }
    if (result.status.result !== 'fail') return undefined;
    const domain = req.sender ? (parseAddress(req.sender)?.domain ?? '') : (req.session?.heloName ?? '');
    const why = result.explanation ? `: ${result.explanation.replace(/[^\x20-\x7e]/g, ' ').slice(0, 200)}` : '';
    return refuse('spf_fail', 550, '5.7.23', `<${req.sender}>: Sender address rejected: SPF fail - ${ip} is not authorized to send for ${domain}${why}`);
  };

  /** CheckMessage: size per domain, DKIM/SPF/DMARC/ARC, Authentication-Results. */
  async check(first: CheckMessageRequest, chunks: AsyncIterable<Buffer>, client: Client): Promise<CheckMessageResponse> {
    const header = first.header!;
    const session = header.session;
    const limit = this.sizeLimit(header.recipients);
    let size = 0;
    let tooLarge = false;
    const counted = async function* () {
      for await (const chunk of chunks) {
        size += chunk.length;
        if (size > limit) tooLarge = true;
        if (!tooLarge) yield chunk;
      }
    };
    const ok = (reason: string, addHeaders: Header[] = []): CheckMessageResponse => ({
      action: PolicyAction.POLICY_ACTION_ACCEPT,
      reply: undefined,
      reason,
      addHeaders,
    });
    // Submission and trusted networks (your own hosts) are not checked, as
    // with OpenDMARC's IgnoreHosts or Stalwart for authenticated sessions.
    if (this.sizeOnly(client, session?.listener)) {
      for await (const _ of counted());
      return tooLarge ? this.tooLarge() : ok(client.trusted ? 'trusted' : 'submission');
    }
    const stream = Readable.from(counted());
    let result: Awaited<ReturnType<typeof authenticate>>;
    try {
      const { authenticate } = await loadMailauth();
      result = await withTimeout(
        authenticate(stream, {
          ip: client.address || undefined,
          helo: session?.heloName,
          sender: header.sender,
          mta: this.opts.hostname,
          resolver: this.opts.resolver,
          disableBimi: true,
        }),
        this.opts.timeoutMs * 5,
        'message authentication',
      );
    } catch (err) {
      // Drain what is left so the client stream completes, then answer without results.
      stream.resume();
      this.opts.logger.warn({ err: errorMessage(err) }, 'message authentication failed');
      if (tooLarge) return this.tooLarge();
      return ok('auth_error', [{ name: 'Authentication-Results', value: `${this.opts.hostname}; none (temporary error)` }]);
    }
    if (tooLarge) return this.tooLarge();
    // Authentication-Results first: it is what ends up at the very top.
    const addHeaders = splitHeaders(result.headers).sort((a, b) => Number(b.name === 'Authentication-Results') - Number(a.name === 'Authentication-Results'));
    const dmarc = result.dmarc;
    const arcPass = result.arc && result.arc.status?.result === 'pass';
    const sealer = arcPass ? String((result.arc as { signature?: { signingDomain?: string } }).signature?.signingDomain ?? '') : '';
    this.opts.logger.info(
      {
        event: 'message_auth',
        session_id: session?.sessionId,
        spf: result.spf ? result.spf.status.result : 'none',
        dkim: result.dkim.results?.map((r) => `${r.signingDomain ?? '?'}:${r.status.result}`),
        dmarc: dmarc ? dmarc.status.result : 'none',
        dmarc_policy: dmarc ? dmarc.policy : undefined,
        arc: result.arc ? result.arc.status?.result : 'none',
      },
      'message authentication',
    );
    if (dmarc && dmarc.status.result === 'fail' && dmarc.policy === 'reject' && !client.trusted && this.opts.dmarcEnforce) {
      if (sealer && this.opts.arcTrustedSealers.includes(sealer.toLowerCase())) return ok('dmarc_fail_arc_override', addHeaders);
      return {
        ...ok('dmarc_reject'),
        action: PolicyAction.POLICY_ACTION_REJECT,
        reply: {
          code: 550,
          enhanced: '5.7.1',
          text: `Email rejected per DMARC policy for ${dmarc.status.header?.from ?? dmarc.domain}`,
        },
      };
    }
    return ok(dmarc ? `dmarc_${dmarc.status.result}` : 'ok', addHeaders);
  }

  private tooLarge(): CheckMessageResponse {
    const d = refuse('message_too_large', 552, '5.3.4', 'Message size exceeds fixed limit');
    return { action: d.action, reply: d.reply, reason: d.reason, addHeaders: [] };
  }

  /** True when check() only compares the size for this client (submission, trusted networks). */
  sizeOnly(client: Client, listener: Listener | undefined): boolean {
    return !inbound(client, listener) || client.trusted;
  }

  /** The smallest limit among the recipients' domains, else the global one. */
  sizeLimit(recipients: string[]): number {
    const snap = this.opts.snapshot();
    let limit = this.opts.maxMessageSize;
    for (const r of recipients) {
      const d = parseAddress(r)?.domain;
      const max = d ? snap.domains.get(d)?.maxMessageSize : undefined;
      if (max && max < limit) limit = max;
    }
    return limit;
  }
}
