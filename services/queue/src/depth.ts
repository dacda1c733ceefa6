// What the queue holds, sampled in the background: unfinished recipients by
// state with the age of the oldest, the outbox backlog, suspended and busy
// destinations, and the NATS streams' backlogs. One place answers both
// QueueService/Status (accepting or not, against the high-water mark) and
// the gauges on /metrics, so a scrape never runs a query.
//
// The recipients count is a scan of the unfinished rows; the interval grows
// with its cost (at least 20 times the last sample's duration), so a deep
// queue is sampled less often instead of keeping Postgres busy.
import type { Meter } from '@opentelemetry/api';
import type { Bus, ConsumerBacklog, StreamBacklog } from '@tern/bus';
import type { Pool } from '@tern/db';
import type { Logger } from '@tern/telemetry';
import { PENDING_SQL, PENDING_STATES, stateName } from './model';
import { errorMessage } from '@tern/runtime';

export interface DepthOptions {
  pool: Pool;
  logger: Logger;
  /** The bus once connected (NATS backlog is left out before). */
  bus: () => Bus | undefined;
  highWater: number;
  /** Busiest destinations (by jobs in flight) given a series of their own. */
  topDestinations: number;
  /** Shortest interval between samples. */
  minIntervalMs: number;
}

export interface QueueStatus {
  accepting: boolean;
  reason: string;
  queuedRecipients: number;
}

interface StateSample {
  recipients: number;
  oldestAgeS: number;
}

interface DestinationSample {
  name: string;
  inflight: number;
  concurrencyLimit: number;
}

interface Sample {
  byState: Map<number, StateSample>;
  outboxRows: number;
  outboxOldestAgeS: number;
  suspendedByOperator: number;
  suspendedUnreachable: number;
  busiest: DestinationSample[];
  streams: StreamBacklog[];
  consumers: ConsumerBacklog[];
  durationS: number;
  takenAt: number;
}

export class QueueDepth {
  private sample: Sample | undefined;
  private dbError: string | undefined = 'not checked yet';
  private timer: NodeJS.Timeout | undefined;
  private running = false;

  constructor(private readonly o: DepthOptions) {}

  /** Unfinished recipients (queued, in flight, deferred, held) at the last sample. */
  get pending(): number {
    let n = 0;
    for (const s of this.sample?.byState.values() ?? []) n += s.recipients;
    return n;
  }

  /** Postgres answered the last sample. */
  get healthy(): boolean {
    return this.dbError === undefined;
  }

  status(): QueueStatus {
    const queuedRecipients = this.pending;
    if (this.dbError) return { accepting: false, reason: `Postgres unreachable: ${this.dbError}`, queuedRecipients };
    if (queuedRecipients >= this.o.highWater) {
      return { accepting: false, reason: `over the high-water mark (${queuedRecipients} >= ${this.o.highWater} unfinished recipients)`, queuedRecipients };
    }
    return { accepting: true, reason: '', queuedRecipients };
  }

  /** Takes one sample now (start() takes the first before the service is ready). */
  async refresh(): Promise<void> {
    const started = performance.now();
    try {
      // One after another: one connection of the small operator pool.
      const states = await this.o.pool.query<{ state: number; n: string; oldest_s: number | null }>(
        `SELECT state, count(*)::bigint AS n, extract(epoch FROM now() - min(created_at))::float8 AS oldest_s
         FROM recipients WHERE state IN ${PENDING_SQL} GROUP BY state`,
      );
      const outbox = await this.o.pool.query<{ n: string; oldest_s: number | null }>(
        `SELECT count(*)::bigint AS n, extract(epoch FROM now() - min(created_at))::float8 AS oldest_s FROM outbox`,
      );
      const destinations = await this.o.pool.query<{ name: string; inflight: number; concurrency_limit: number; suspended: boolean; dead: boolean }>(
        `SELECT name, inflight, concurrency_limit, suspended, coalesce(dead_until > now(), false) AS dead
         FROM destinations WHERE inflight > 0 OR suspended OR dead_until > now()`,
      );
      const byState = new Map<number, StateSample>();
      for (const r of states.rows) byState.set(r.state, { recipients: Number(r.n), oldestAgeS: Math.max(0, r.oldest_s ?? 0) });
      const busiest = destinations.rows
        .filter((d) => d.inflight > 0)
        .sort((a, b) => b.inflight - a.inflight || a.name.localeCompare(b.name))
        .slice(0, this.o.topDestinations)
        .map((d) => ({ name: d.name, inflight: d.inflight, concurrencyLimit: d.concurrency_limit }));
      let backlog: { streams: StreamBacklog[]; consumers: ConsumerBacklog[] } = { streams: this.sample?.streams ?? [], consumers: this.sample?.consumers ?? [] };
      const bus = this.o.bus();
      if (bus) {
        try {
          backlog = await bus.backlog();
        } catch (err) {
          this.o.logger.warn({ err: errorMessage(err) }, 'could not read the NATS stream backlog; the NATS gauges keep their last values');
        }
      }
      this.sample = {
        byState,
        outboxRows: Number(outbox.rows[0]?.n ?? 0),
        outboxOldestAgeS: Math.max(0, outbox.rows[0]?.oldest_s ?? 0),
        suspendedByOperator: destinations.rows.filter((d) => d.suspended).length,
        suspendedUnreachable: destinations.rows.filter((d) => !d.suspended && d.dead).length,
        busiest,
        ...backlog,
        durationS: (performance.now() - started) / 1000,
        takenAt: Date.now(),
      };
      this.dbError = undefined;
    } catch (err) {
      this.dbError = errorMessage(err);
    }
  }

  start(): void {
    this.running = true;
    const next = () => {
      if (!this.running) return;
      const delay = Math.max(this.o.minIntervalMs, Math.ceil((this.sample?.durationS ?? 0) * 20_000));
      this.timer = setTimeout(() => void this.refresh().finally(next), delay);
    };
    next();
  }

  stop(): void {
    this.running = false;
    if (this.timer) clearTimeout(this.timer);
  }

  /** The gauges, read from the last sample. */
  observe(meter: Meter): void {
    const each = <T>(f: (s: Sample) => T) => (this.sample ? f(this.sample) : undefined);
    meter.createObservableGauge('tern_queue_recipients', { description: 'Unfinished recipients by state (queued, inflight, deferred, held), at the last sample' }).addCallback((r) =>
      each((s) => {
        for (const state of PENDING_STATES) r.observe(s.byState.get(state)?.recipients ?? 0, { state: stateName(state) });
      }),
    );
    meter
      .createObservableGauge('tern_queue_oldest_recipient_age_seconds', { description: 'Age of the oldest unfinished recipient by state (0 when none), at the last sample', unit: 's' })
      .addCallback((r) =>
        each((s) => {
          for (const state of PENDING_STATES) r.observe(s.byState.get(state)?.oldestAgeS ?? 0, { state: stateName(state) });
        }),
      );
    meter.createObservableGauge('tern_queue_high_water_recipients', { description: 'TERN_QUEUE_HIGH_WATER: unfinished recipients at which Enqueue is refused' }).addCallback((r) => r.observe(this.o.highWater));
    meter.createObservableGauge('tern_queue_accepting', { description: '1 while the queue accepts messages (QueueService/Status), else 0' }).addCallback((r) => r.observe(this.status().accepting ? 1 : 0));
    meter.createObservableGauge('tern_queue_outbox_rows', { description: 'Outbox rows written and not yet published to NATS' }).addCallback((r) => each((s) => r.observe(s.outboxRows)));
    meter
      .createObservableGauge('tern_queue_outbox_oldest_age_seconds', { description: 'Age of the oldest outbox row (0 when empty)', unit: 's' })
      .addCallback((r) => each((s) => r.observe(s.outboxOldestAgeS)));
    meter.createObservableGauge('tern_queue_destinations_suspended', { description: 'Destinations not dispatched to: by an operator, or automatically after repeated failures (unreachable)' }).addCallback((r) =>
      each((s) => {
        r.observe(s.suspendedByOperator, { reason: 'operator' });
        r.observe(s.suspendedUnreachable, { reason: 'unreachable' });
      }),
    );
    meter
      .createObservableGauge('tern_queue_destination_inflight_jobs', { description: 'Jobs in flight for the busiest destinations (TERN_QUEUE_METRICS_TOP_DESTINATIONS)' })
      .addCallback((r) => each((s) => s.busiest.forEach((d) => r.observe(d.inflight, { destination: d.name }))));
    meter
      .createObservableGauge('tern_queue_destination_concurrency_limit', { description: 'Current concurrency limit of the busiest destinations (adapted by feedback)' })
      .addCallback((r) => each((s) => s.busiest.forEach((d) => r.observe(d.concurrencyLimit, { destination: d.name }))));
    meter.createObservableGauge('tern_nats_stream_messages', { description: 'Messages stored in each JetStream stream' }).addCallback((r) => each((s) => s.streams.forEach((b) => r.observe(b.messages, { stream: b.stream }))));
    meter.createObservableGauge('tern_nats_stream_bytes', { description: 'Bytes stored in each JetStream stream', unit: 'By' }).addCallback((r) => each((s) => s.streams.forEach((b) => r.observe(b.bytes, { stream: b.stream }))));
    meter
      .createObservableGauge('tern_nats_consumer_pending_messages', { description: 'Messages a durable consumer has not yet been given' })
      .addCallback((r) => each((s) => s.consumers.forEach((c) => r.observe(c.pending, { stream: c.stream, consumer: c.consumer }))));
    meter
      .createObservableGauge('tern_nats_consumer_ack_pending_messages', { description: 'Messages given to a durable consumer and not yet acknowledged' })
      .addCallback((r) => each((s) => s.consumers.forEach((c) => r.observe(c.ackPending, { stream: c.stream, consumer: c.consumer }))));
    meter
      .createObservableGauge('tern_queue_depth_sample_seconds', { description: 'Duration of the last depth sample (its interval is at least 20 times this)', unit: 's' })
      .addCallback((r) => each((s) => r.observe(s.durationS)));
    meter
      .createObservableGauge('tern_queue_depth_sample_age_seconds', { description: 'Time since the last depth sample', unit: 's' })
      .addCallback((r) => each((s) => r.observe((Date.now() - s.takenAt) / 1000)));
  }
}
