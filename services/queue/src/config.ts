// Process settings of the queue service, read once from the environment.
// Keys are the variable names, so a bad value is reported by its name.
import { bool, commonSchema, nonNegativeInt, parseEnv, positiveInt, postgresUrl, natsUrl, z } from '@tern/config';
import { EVENT_FORMATS } from '@tern/bus';

const schema = z.object({
  ...commonSchema({ grpcPort: 7003, metricsPort: 9103 }),
  TERN_DATABASE_URL: postgresUrl(),
  TERN_DATABASE_POOL_MAX: positiveInt(16),
  TERN_NATS_URL: natsUrl(),

  // Enqueue
  /** Bodies up to this size stay in memory until commit; bigger ones are spilled to Postgres as they arrive. */
  TERN_QUEUE_MEMORY_BODY_MAX: positiveInt(256 * 1024),
  /** Largest message body accepted (bytes). */
  TERN_QUEUE_MAX_MESSAGE_SIZE: positiveInt(64 * 1024 * 1024),
  /** Recipients per message accepted. */
  TERN_QUEUE_MAX_RECIPIENTS: positiveInt(1000),
  /** Group commit: flush after this many messages ... */
  TERN_QUEUE_COMMIT_BATCH: positiveInt(128),
  /**
   * ... or this many milliseconds after the first one waiting; 0: at the end
   * of the event-loop turn it arrived in (batches then grow only from what
   * arrives while group commits are running, with no timer's latency).
   */
  TERN_QUEUE_COMMIT_DELAY_MS: nonNegativeInt(0),
  /**
   * Message-path statements wait at most this long for a row lock (Postgres
   * lock_timeout). A group commit that times out on a destination row
   * stores its messages for the scheduler instead of waiting on.
   */
  TERN_QUEUE_LOCK_TIMEOUT_MS: positiveInt(2_000),
  /** Status says "not accepting" at or above this many unfinished recipients. */
  TERN_QUEUE_HIGH_WATER: positiveInt(2_000_000),

  // Scheduling
  /** First retry after a temporary failure (seconds) ... */
  TERN_QUEUE_BACKOFF_MIN_S: positiveInt(300),
  /** ... doubling up to this. */
  TERN_QUEUE_BACKOFF_MAX_S: positiveInt(3600),
  /** Random spread added to each backoff, as a fraction (0.2 = up to +-20%). */
  TERN_QUEUE_BACKOFF_JITTER: z.coerce.number().min(0).max(1).default(0.2),
  /** Give up on a recipient this long after arrival (seconds; Postfix maximal_queue_lifetime). */
  TERN_QUEUE_LIFETIME_S: positiveInt(5 * 86400),
  /** Delay warning after this long (seconds), where NOTIFY allows; 0 = never. */
  TERN_QUEUE_DELAY_WARNING_S: nonNegativeInt(4 * 3600),
  /** A dispatched job's lease: without a result by then, its recipients are due again. */
  TERN_QUEUE_LEASE_S: positiveInt(900),
  /** Recipients of one message to one destination per job. */
  TERN_QUEUE_JOB_MAX_RECIPIENTS: positiveInt(50),
  /**
   * Bodies up to this size travel inside the DeliveryJob (delivery then does
   * not read them back with ReadBody); bigger ones are read. 0 = never.
   * The outbox row keeps the job without its body (written once, to
   * body_chunks), so the cost of inlining is NATS carrying it, far less
   * than a ReadBody per job (docs/performance.md, Why the code is as it
   * is). In flight, jobs are bounded by the destinations' slots; TERN_JOBS
   * holds at most 4 GiB.
   */
  TERN_QUEUE_INLINE_BODY_MAX: nonNegativeInt(128 * 1024),
  /**
   * Bytes of bodies kept in memory for messages that got no slot at their
   * commit, so the scheduler does not read them back (see body-cache.ts);
   * oldest dropped first. 0 = none kept.
   */
  TERN_QUEUE_BODY_CACHE_BYTES: nonNegativeInt(64 * 1024 * 1024),
  /** Recipients claimed per scheduler pass. */
  TERN_QUEUE_DISPATCH_BATCH: positiveInt(1000),
  /** Scheduler poll interval (it is also woken by commits and results). */
  TERN_QUEUE_SCHEDULE_INTERVAL_MS: positiveInt(1000),
  /** Results applied per transaction ... */
  TERN_QUEUE_RESULT_BATCH: positiveInt(256),
  /**
   * ... gathered for up to this many milliseconds after the first one
   * waiting. Delays only the bookkeeping (the message is already at the
   * remote MX) and a slot's return; a longer wait means fewer, larger
   * result transactions (docs/performance.md).
   */
  TERN_QUEUE_RESULT_DELAY_MS: nonNegativeInt(20),
  /** Jobs in flight per destination: start ... */
  TERN_QUEUE_DEST_CONCURRENCY_INIT: positiveInt(5),
  /**
   * ... grown by one per success up to this. A job holds its slot from the
   * dispatch commit to the result commit (durable hand-offs both ways), so
   * this bounds the jobs in that pipeline for one destination, across all
   * delivery pods; sessions are fewer, and each delivery pod caps its own
   * per peer (TERN_SMTP_MAX_SESSIONS_PER_PEER, 20). Too low a maximum runs
   * out of slots under many sessions (a slot is held through both
   * hand-offs), and the messages without one wait for a second transaction
   * that reads their bodies back (docs/performance.md).
   */
  TERN_QUEUE_DEST_CONCURRENCY_MAX: positiveInt(100),
  /** Jobs started per destination per minute; 0 = no limit. */
  TERN_QUEUE_DEST_RATE_PER_MIN: nonNegativeInt(0),
  /** Consecutive destination failures (421, no connection) that suspend a destination. */
  TERN_QUEUE_DEST_FAILURES_TO_SUSPEND: positiveInt(5),
  /** A suspended (dead) destination gets one probe job after this many seconds. */
  TERN_QUEUE_DEST_PROBE_S: positiveInt(60),
  /** Keep the body this long after every recipient is final (bounce may still read it). */
  TERN_QUEUE_BODY_GRACE_S: nonNegativeInt(3600),
  /** Keep records of finished messages this long, then purge them. */
  TERN_QUEUE_RETENTION_S: positiveInt(7 * 86400),
  /** Housekeeping batch size (body removal, purge, expiry). */
  TERN_QUEUE_HOUSEKEEPING_BATCH: positiveInt(1000),
  /** Write lifecycle events (received, delivered, deferred, ...) to the TERN_EVENTS stream. */
  TERN_QUEUE_EVENTS: bool(true),
  /** Lifecycle event payloads: protobuf (LifecycleEvents) or its proto3 JSON. */
  TERN_EVENTS_FORMAT: z.enum(EVENT_FORMATS).default('protobuf'),
  /** Destinations with series of their own in the per-destination metrics (the busiest; the rest are "other"). */
  TERN_QUEUE_METRICS_TOP_DESTINATIONS: nonNegativeInt(20),
});

export type Config = z.infer<typeof schema>;

export function loadConfig(env: Record<string, string | undefined> = process.env): Config {
  return parseEnv(schema, env);
}
