// The sender loop: takes due deliveries from the outbox (any pod may; a
// claim is a lease), POSTs them signed, with bounded concurrency (this pod's
// total and per endpoint), and records what happened: 2xx done; 410 Gone
// suspends the endpoint at once; anything else is retried with exponential
// backoff and jitter, the delivery on its own schedule and the endpoint as a
// whole (no new attempt to a failing endpoint before its backoff ends, so an
// outage costs one probe per backoff step, not one request per pending
// event), and the endpoint is suspended after TERN_WEBHOOKS_FAILURES_TO_SUSPEND
// failed attempts in a row. Deliveries past their lifetime are dropped by
// the sweep (housekeeping) and counted.
import type { Logger, Meter } from '@tern/telemetry';

type Counter = ReturnType<Meter['createCounter']>;
type Histogram = ReturnType<Meter['createHistogram']>;
import { createAgents, post, type Agents, type PostOptions, type PostResult } from './post';
import { batchId, signedHeaders } from './sign';
import type { ClaimedDelivery, SendableEndpoint, WebhookStore } from './store';
import { errorMessage } from '@tern/runtime';

export interface SenderSettings {
  concurrency: number;
  endpointConcurrency: number;
  batchMax: number;
  batchMaxBytes: number;
  retryMinMs: number;
  retryMaxMs: number;
  failuresToSuspend: number;
  pollMs: number;
  timeoutMs: number;
}

export interface SenderMetrics {
  deliveries: Counter;
  attemptSeconds: Histogram;
}

/** Backoff after the n-th failure (1 = first): doubling from min, capped at max, then 80-120% of that (jitter). */
export function backoffMs(n: number, minMs: number, maxMs: number, random = Math.random): number {
  const base = Math.min(maxMs, minMs * 2 ** Math.min(Math.max(n - 1, 0), 40));
  return Math.round(base * (0.8 + 0.4 * random()));
}

/** One request: deliveries of one endpoint (one, or a batch). */
interface Send {
  endpoint: SendableEndpoint;
  items: ClaimedDelivery[];
}

export class Sender {
  private endpoints = new Map<string, SendableEndpoint>();
  private inflight = 0;
  private readonly perEndpoint = new Map<string, number>();
  /** Each endpoint's own connections (post.ts says why). */
  private readonly agents = new Map<string, Agents>();
  private readonly running = new Set<Promise<void>>();
  private timer: NodeJS.Timeout | undefined;
  private ticking = false;
  private again = false;
  private stopped = false;
  /** Rotates which endpoint is served first when the pod's slots are few. */
  private turn = 0;
  /** When the endpoints were last read: readiness wants Postgres answering. */
  lastRefresh = 0;

  constructor(
    private readonly store: WebhookStore,
    private readonly s: SenderSettings,
    private readonly postOptions: PostOptions,
    private readonly metrics: SenderMetrics,
    private readonly logger: Logger,
  ) {}

  /** The endpoints as last read (for the gauges). */
  snapshot(): SendableEndpoint[] {
    return [...this.endpoints.values()];
  }

  start(): void {
    this.schedule(0);
  }

  /** Look for due deliveries now (new events were queued, an endpoint resumed). */
  wake(): void {
    if (this.stopped) return;
    if (this.ticking) this.again = true;
    else this.schedule(0);
  }

  /** Stops taking deliveries and waits for the requests in flight (bounded by their timeout). */
  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    await Promise.allSettled([...this.running]);
    for (const a of this.agents.values()) {
      a.http.destroy();
      a.https.destroy();
    }
  }

  private schedule(ms: number): void {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => void this.tick(), ms);
  }

  private async tick(): Promise<void> {
    if (this.stopped) return;
    this.ticking = true;
    try {
      // Read at most every 250 ms: a tick also follows every finished request.
      if (Date.now() - this.lastRefresh >= 250) {
        this.endpoints = new Map((await this.store.sendableEndpoints()).map((e) => [e.id, e]));
        this.lastRefresh = Date.now();
        for (const [id, a] of this.agents) {
          if (this.endpoints.has(id)) continue;
          a.http.destroy();
          a.https.destroy();
          this.agents.delete(id);
        }
      }
      await this.fill();
    } catch (err) {
      this.logger.warn({ event: 'webhooks_sender_failed', err: errorMessage(err) }, 'looking for due webhook deliveries failed; trying again');
    } finally {
      this.ticking = false;
      if (!this.stopped) this.schedule(this.again ? 0 : this.s.pollMs);
      this.again = false;
    }
  }

  /** Claims what the free slots can take and starts the requests. */
  private async fill(): Promise<void> {
    const free = this.s.concurrency - this.inflight;
    if (free <= 0) return;
    const now = Date.now();
    const ready = [...this.endpoints.values()].filter((e) => e.state === 'active' && (!e.retry_after || e.retry_after.getTime() <= now));
    if (!ready.length) return;
    // Slots handed out in turns, one per endpoint per round, so one busy
    // endpoint cannot take the whole pod.
    const start = this.turn++ % ready.length;
    const order = [...ready.slice(start), ...ready.slice(0, start)];
    const slots = new Map<string, number>();
    let left = free;
    for (let round = 0; left > 0 && round < this.s.endpointConcurrency; round++) {
      let gave = false;
      for (const e of order) {
        if (left <= 0) break;
        const have = (this.perEndpoint.get(e.id) ?? 0) + (slots.get(e.id) ?? 0);
        if (have >= this.s.endpointConcurrency) continue;
        slots.set(e.id, (slots.get(e.id) ?? 0) + 1);
        left--;
        gave = true;
      }
      if (!gave) break;
    }
    const wants = [...slots].map(([id, n]) => ({ endpointId: id, limit: n * (this.endpoints.get(id)!.batch ? this.s.batchMax : 1) }));
    const leaseMs = this.s.timeoutMs + 60_000;
    const claimed = await this.store.claim(wants, leaseMs);
    for (const send of this.group(claimed)) this.launch(send);
  }

  private group(claimed: ClaimedDelivery[]): Send[] {
    const sends: Send[] = [];
    const byEndpoint = new Map<string, ClaimedDelivery[]>();
    for (const d of claimed) {
      const list = byEndpoint.get(d.endpoint_id);
      if (list) list.push(d);
      else byEndpoint.set(d.endpoint_id, [d]);
    }
    for (const [id, items] of byEndpoint) {
      const endpoint = this.endpoints.get(id)!;
      if (!endpoint.batch) {
        for (const d of items) sends.push({ endpoint, items: [d] });
        continue;
      }
      let current: ClaimedDelivery[] = [];
      let bytes = 2;
      for (const d of items) {
        const size = Buffer.byteLength(d.payload) + 1;
        if (current.length && (current.length >= this.s.batchMax || bytes + size > this.s.batchMaxBytes)) {
          sends.push({ endpoint, items: current });
          current = [];
          bytes = 2;
        }
        current.push(d);
        bytes += size;
      }
      if (current.length) sends.push({ endpoint, items: current });
    }
    return sends;
  }

  private launch(send: Send): void {
    const id = send.endpoint.id;
    this.inflight++;
    this.perEndpoint.set(id, (this.perEndpoint.get(id) ?? 0) + 1);
    const p = this.attempt(send)
      .catch((err: Error) =>
        this.logger.error({ event: 'webhook_record_failed', endpoint_id: id, err: err.message }, 'recording a webhook attempt failed; the deliveries are tried again after their lease'),
      )
      .finally(() => {
        this.inflight--;
        const n = (this.perEndpoint.get(id) ?? 1) - 1;
        if (n > 0) this.perEndpoint.set(id, n);
        else this.perEndpoint.delete(id);
        this.running.delete(p);
        // A slot is free: more may be due.
        this.wake();
      });
    this.running.add(p);
  }

  private async attempt({ endpoint, items }: Send): Promise<void> {
    const batch = endpoint.batch;
    const webhookId = batch ? batchId(endpoint.id, items.map((d) => d.event_id)) : items[0]!.event_id;
    const body = Buffer.from(batch ? `[${items.map((d) => d.payload).join(',')}]` : items[0]!.payload, 'utf8');
    const started = performance.now();
    let agents = this.agents.get(endpoint.id);
    if (!agents) this.agents.set(endpoint.id, (agents = createAgents(this.s.endpointConcurrency)));
    const result: PostResult = await post(new URL(endpoint.url), signedHeaders(endpoint.secretBytes, webhookId, body), body, this.postOptions, agents);
    const seconds = (performance.now() - started) / 1000;
    const ok = result.status >= 200 && result.status < 300;
    this.metrics.attemptSeconds.record(seconds, { result: ok ? 'success' : 'failure' });
    const log = { endpoint_id: endpoint.id, webhook_id: webhookId, events: items.length, status: result.status, ms: Math.round(seconds * 1000) };
    if (ok) {
      const done = await this.store.delivered(endpoint.id, items.map((d) => d.id), result.status);
      this.metrics.deliveries.add(done, { result: 'delivered' });
      this.logger.debug({ event: 'webhook_delivered', ...log }, `webhook ${webhookId} delivered to ${endpoint.id}`);
      return;
    }
    const error = result.error ?? `HTTP ${result.status}`;
    const gone = result.status === 410;
    const endpointDelayMs = backoffMs(endpoint.consecutive_failures + 1, this.s.retryMinMs, this.s.retryMaxMs);
    const outcome = await this.store.failed(
      endpoint.id,
      { ids: items.map((d) => d.id), delaysMs: items.map((d) => backoffMs(d.attempts, this.s.retryMinMs, this.s.retryMaxMs)), status: result.status, error },
      { delayMs: endpointDelayMs, suspendAfter: this.s.failuresToSuspend, suspendNow: gone ? 'answered 410 Gone' : undefined },
    );
    // The next claim must not run ahead of the endpoint's backoff.
    const cached = this.endpoints.get(endpoint.id);
    if (cached) {
      cached.consecutive_failures = outcome.failures;
      cached.retry_after = new Date(Date.now() + endpointDelayMs);
      if (outcome.suspended) cached.state = 'suspended';
    }
    this.metrics.deliveries.add(items.length, { result: 'retry' });
    this.logger.warn({ event: 'webhook_failed', ...log, error, failures: outcome.failures, refused: result.refused || undefined }, `webhook ${webhookId} to ${endpoint.id} failed: ${error}`);
    if (outcome.suspended) {
      this.logger.warn(
        { event: 'webhook_endpoint_suspended', endpoint_id: endpoint.id, url: endpoint.url, failures: outcome.failures, reason: gone ? 'answered 410 Gone' : error },
        `webhook endpoint ${endpoint.id} suspended (${gone ? 'it answered 410 Gone' : `${outcome.failures} failed attempts in a row`}); tern webhook resume ${endpoint.id} sends its pending deliveries again`,
      );
    }
  }
}
