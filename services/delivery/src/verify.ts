// Recipient address verification (DeliveryService.VerifyRecipient), asked by
// policy for relay domains whose recipient check is `callout` (Postfix
// reject_unverified_recipient). Delivery reaches the next hop as a job to that
// domain would (the queue's route, else MX; the same TLS policy, MTA-STS and
// DANE, through worker.ts's plan), says EHLO, MAIL FROM:<TERN_VERIFY_SENDER>,
// RCPT TO:<address>, RSET and QUIT, and answers with the reply to RCPT:
// 2xx OK, 5xx REJECT, anything else (4xx, no next hop answering, a refused
// MAIL, a greeting refused) TEMPFAIL: only a RCPT refusal says anything of the
// address. Nothing is sent. Bounded: TERN_VERIFY_MAX_INFLIGHT at once per pod
// (more: RESOURCE_EXHAUSTED), a session of its own each (never one a job
// could reuse), counted under the peer's TERN_SMTP_MAX_SESSIONS_PER_PEER (at
// the cap: TEMPFAIL rather than wait), and each connect and reply within
// TERN_VERIFY_TIMEOUT_MS.
import { grpc, unary } from '@tern/grpc';
import {
  DeliveryJob,
  matchRoute,
  VerifyResult,
  type DeliveryServiceServer,
  type QueueServiceClient,
  type Route,
  type SmtpReply,
  type VerifyRecipientRequest,
  type VerifyRecipientResponse,
} from '@tern/proto';
import { untraced, type Logger, type Meter } from '@tern/telemetry';
import { NotAnAddressError, VerifyBusyError } from './errors';
import { SessionError, syntheticReply, type TlsMode } from './smtp-client';
import { connectOptions, plan, type WorkerDeps } from './worker';
import { errorMessage, repeatEvery, type Repeating } from '@tern/runtime';

/** The queue's route table, asked every few seconds (the queue owns it; jobs carry their route, a verification has none). */
export class RouteCache {
  private routes: Map<string, Route> | undefined;
  private refreshes?: Repeating;
  private loading?: Promise<void>;

  constructor(
    private readonly queue: Pick<QueueServiceClient, 'listRoutes'>,
    private readonly refreshMs: number,
    private readonly logger: Logger,
  ) {}

  private load(): Promise<void> {
    // Background work for no one message (also when a verification waits for it): traced by nobody.
    this.loading ??= untraced(() => unary(this.queue.listRoutes.bind(this.queue), {}, { deadlineMs: 5_000 }))
      .then((res) => {
        this.routes = new Map(res.routes.map((r) => [r.domain, r]));
      })
      .finally(() => (this.loading = undefined));
    return this.loading;
  }

  start(): void {
    this.refreshes = repeatEvery(this.refreshMs, () => this.load(), (err) =>
      this.logger.warn({ err: errorMessage(err) }, 'route table not refreshed from the queue; keeping the previous one'),
    );
  }

  stop(): void {
    this.refreshes?.stop();
  }

  /** The route of a domain; the table is read once first if it never was (an error then says so). */
  async match(domain: string): Promise<Route | undefined> {
    if (!this.routes) await this.load();
    return matchRoute(this.routes!, domain);
  }
}

export interface VerifierOptions {
  sender: string;
  timeoutMs: number;
  maxInflight: number;
  maxSessionsPerPeer: number;
}

type Answer = Omit<VerifyRecipientResponse, 'result'> & { result: VerifyResult };

const tempfail = (reply: SmtpReply, remoteHost = '', stage = ''): Answer => ({ result: VerifyResult.VERIFY_RESULT_TEMPFAIL, reply, remoteHost, stage });

export class Verifier {
  private inflight = 0;
  private readonly seconds;
  private readonly counted;

  constructor(
    private readonly worker: WorkerDeps,
    private readonly routes: RouteCache,
    private readonly o: VerifierOptions,
    meter: Meter,
  ) {
    this.seconds = meter.createHistogram('tern_delivery_verify_seconds', { description: 'Recipient verification (callout) from request to answer, seconds', unit: 's' });
    this.counted = meter.createCounter('tern_delivery_verify_total', { description: 'Recipient verifications by result (ok, reject, tempfail, busy)' });
  }

  /** The gRPC service: VerifyRecipient. */
  service(): DeliveryServiceServer {
    return {
      verifyRecipient: (call: grpc.ServerUnaryCall<VerifyRecipientRequest, VerifyRecipientResponse>, cb: grpc.sendUnaryData<VerifyRecipientResponse>) => {
        const address = call.request.address.trim();
        const at = address.lastIndexOf('@');
        if (at < 1 || at === address.length - 1 || address.length > 320 || /[\s<>]/.test(address)) {
          cb(new NotAnAddressError(call.request.address));
          return;
        }
        if (this.inflight >= this.o.maxInflight) {
          this.counted.add(1, { result: 'busy' });
          cb(new VerifyBusyError(this.o.maxInflight));
          return;
        }
        this.inflight++;
        const t0 = performance.now();
        this.verify(address)
          .then(
            (a) => {
              const result = a.result === VerifyResult.VERIFY_RESULT_OK ? 'ok' : a.result === VerifyResult.VERIFY_RESULT_REJECT ? 'reject' : 'tempfail';
              this.counted.add(1, { result });
              this.seconds.record((performance.now() - t0) / 1000, { result });
              this.worker.logger.info(
                { event: 'recipient_verification', address, result, remote: a.remoteHost, stage: a.stage, reply: `${a.reply?.code} ${a.reply?.enhanced} ${a.reply?.text}`, ms: Math.round(performance.now() - t0) },
                `verification of ${address}: ${result}`,
              );
              cb(null, a);
            },
            (err: Error) => {
              this.worker.logger.warn({ address, err: err.message }, 'recipient verification failed');
              cb(null, tempfail(syntheticReply(451, '4.3.0', `verification failed: ${err.message}`)));
            },
          )
          .finally(() => this.inflight--);
      },
    };
  }

  /** One verification: the next hops in order until one answers the RCPT. */
  async verify(address: string): Promise<Answer> {
    const domain = address.slice(address.lastIndexOf('@') + 1).toLowerCase().replace(/\.$/, '');
    let route: Route | undefined;
    try {
      route = await this.routes.match(domain);
    } catch (err) {
      return tempfail(syntheticReply(451, '4.3.0', `the route table could not be read from the queue: ${errorMessage(err)}`));
    }
    const job = DeliveryJob.fromPartial({ destination: domain, route });
    const p = await plan(this.worker, job, async () => '');
    // No next hop (DNS, an unusable route): nothing is known of the address.
    if ('reply' in p) return tempfail(p.reply);
    const w = this.worker;
    let last: Answer | undefined;
    // Opportunistic TLS: a host whose handshake fails is tried again in clear only when every one failed at TLS (as deliver does).
    const passes: TlsMode[] = p.tls === 'may' ? ['may', 'none'] : [p.tls];
    let failures = 0;
    let tlsFailures = 0;
    for (const mode of passes) {
      if (mode === 'none' && p.tls === 'may' && !(failures > 0 && tlsFailures === failures)) break;
      for (const hop of p.hops) {
        if (mode === 'none' && (hop.dane || hop.unusable)) continue;
        if (hop.unusable) {
          last = tempfail(hop.unusable, hop.name);
          failures++;
          continue;
        }
        for (const address_ of p.socketPath ? [p.socketPath] : hop.addresses) {
          const opts = connectOptions(w, p, hop, address_, mode, this.o.timeoutMs);
          const remoteHost = p.socketPath ? `unix:${p.socketPath}` : `${hop.name}[${address_}]`;
          if (w.pool.sessionsTo(opts) >= this.o.maxSessionsPerPeer) {
            last = tempfail(syntheticReply(451, '4.4.5', `${remoteHost} has ${this.o.maxSessionsPerPeer} sessions from this pod (TERN_SMTP_MAX_SESSIONS_PER_PEER); not verified now`), remoteHost);
            continue;
          }
          let client;
          try {
            // A session of its own: its short timeouts must never carry a job's data.
            client = await w.pool.acquire(opts, true);
          } catch (err) {
            if (!(err instanceof SessionError)) throw err;
            last = tempfail(err.reply, err.stage === 'connect' ? '' : remoteHost, err.stage);
            failures++;
            if (err.tlsFailure) tlsFailures++;
            continue;
          }
          try {
            const r = await client.probe(this.o.sender, address);
            if (!r.rcpt) return tempfail(r.mail, remoteHost, 'mail');
            const code = r.rcpt.code;
            const result = code >= 200 && code < 300 ? VerifyResult.VERIFY_RESULT_OK : code >= 500 ? VerifyResult.VERIFY_RESULT_REJECT : VerifyResult.VERIFY_RESULT_TEMPFAIL;
            return { result, reply: r.rcpt, remoteHost, stage: 'rcpt' };
          } catch (err) {
            if (!(err instanceof SessionError)) throw err;
            // The session broke (421, timeout): no verdict from this host.
            last = tempfail(err.reply, remoteHost, err.stage);
            failures++;
          } finally {
            // QUIT: a verification session is never pooled.
            w.pool.release(client, opts, false);
          }
        }
      }
    }
    return last ?? tempfail(syntheticReply(451, '4.4.1', `no next hop of ${domain} answered`));
  }
}
