// The queue's settings compiled once (after Temporal's compileWorkerOptions):
// the environment, read and checked by config.ts, becomes one fully
// defaulted object with a section per part, and each part reads its own.
// A setting two parts share (the lease, a job's size, the destination
// limits) is compiled once and appears in each section that needs it.
import type { Config } from './config';
import { destinationLimits, type DestinationLimits } from './destination';
import type { EventSettings } from './events';
import type { BackoffSettings } from './model';

/** Connections of the operator and housekeeping pool. */
const OPS_POOL_MAX = 4;

/** The enqueuer's section (EnqueueOptions adds its collaborators). */
export interface EnqueueSettings {
  memoryBodyMax: number;
  maxMessageSize: number;
  maxRecipients: number;
  batchMax: number;
  batchDelayMs: number;
  lifetimeS: number;
  leaseS: number;
  jobMaxRecipients: number;
  /** Bodies up to this size travel in the job (DeliveryJob.body; 0 = never). */
  inlineBodyMax: number;
  limits: DestinationLimits;
  /** Lifecycle events written with each commit. */
  events: EventSettings;
}

export interface QueueOptions {
  database: { url: string; poolMax: number; opsPoolMax: number; lockTimeoutMs: number };
  nats: { url: string; name: string };
  listen: { grpc: { host: string; port: number }; metrics: { host: string; port: number }; graceMs: number };
  /** Bodies of messages left queued at their commit, kept for their first dispatch. */
  bodyCacheBytes: number;
  /** The busiest destinations with metric series of their own. */
  topDestinations: number;
  enqueue: EnqueueSettings;
  /** The scheduler's; `batch`, `jobMaxRecipients`, `inlineBodyMax`, `leaseS` and `limits` are also the result applier's dispatch into freed slots. */
  dispatch: { limits: DestinationLimits; jobMaxRecipients: number; batch: number; inlineBodyMax: number; leaseS: number; intervalMs: number };
  results: { limits: DestinationLimits; backoff: BackoffSettings; batchMax: number; batchDelayMs: number; events: EventSettings };
  housekeeping: { batch: number; delayWarningS: number; bodyGraceS: number; retentionS: number; intervalMs: number; events: EventSettings };
  relay: { batch: number; pollMs: number };
  depth: { highWater: number; topDestinations: number; minIntervalMs: number };
  operations: { limits: DestinationLimits; events: EventSettings };
}

export function compileOptions(config: Config): QueueOptions {
  const limits = destinationLimits(config);
  const events: EventSettings = { enabled: config.TERN_QUEUE_EVENTS, format: config.TERN_EVENTS_FORMAT };
  const job = { jobMaxRecipients: config.TERN_QUEUE_JOB_MAX_RECIPIENTS, inlineBodyMax: config.TERN_QUEUE_INLINE_BODY_MAX, leaseS: config.TERN_QUEUE_LEASE_S };
  return {
    database: { url: config.TERN_DATABASE_URL, poolMax: config.TERN_DATABASE_POOL_MAX, opsPoolMax: OPS_POOL_MAX, lockTimeoutMs: config.TERN_QUEUE_LOCK_TIMEOUT_MS },
    nats: { url: config.TERN_NATS_URL, name: `tern-queue-${config.TERN_HOSTNAME}` },
    listen: { grpc: config.TERN_GRPC_LISTEN, metrics: config.TERN_METRICS_LISTEN, graceMs: config.TERN_SHUTDOWN_GRACE_MS },
    bodyCacheBytes: config.TERN_QUEUE_BODY_CACHE_BYTES,
    topDestinations: config.TERN_QUEUE_METRICS_TOP_DESTINATIONS,
    enqueue: {
      ...job,
      memoryBodyMax: config.TERN_QUEUE_MEMORY_BODY_MAX,
      maxMessageSize: config.TERN_QUEUE_MAX_MESSAGE_SIZE,
      maxRecipients: config.TERN_QUEUE_MAX_RECIPIENTS,
      batchMax: config.TERN_QUEUE_COMMIT_BATCH,
      batchDelayMs: config.TERN_QUEUE_COMMIT_DELAY_MS,
      lifetimeS: config.TERN_QUEUE_LIFETIME_S,
      limits,
      events,
    },
    dispatch: { ...job, limits, batch: config.TERN_QUEUE_DISPATCH_BATCH, intervalMs: config.TERN_QUEUE_SCHEDULE_INTERVAL_MS },
    results: {
      limits,
      backoff: { minS: config.TERN_QUEUE_BACKOFF_MIN_S, maxS: config.TERN_QUEUE_BACKOFF_MAX_S, jitter: config.TERN_QUEUE_BACKOFF_JITTER },
      batchMax: config.TERN_QUEUE_RESULT_BATCH,
      batchDelayMs: config.TERN_QUEUE_RESULT_DELAY_MS,
      events,
    },
    housekeeping: {
      batch: config.TERN_QUEUE_HOUSEKEEPING_BATCH,
      delayWarningS: config.TERN_QUEUE_DELAY_WARNING_S,
      bodyGraceS: config.TERN_QUEUE_BODY_GRACE_S,
      retentionS: config.TERN_QUEUE_RETENTION_S,
      intervalMs: 5_000,
      events,
    },
    relay: { batch: 500, pollMs: 1_000 },
    depth: { highWater: config.TERN_QUEUE_HIGH_WATER, topDestinations: config.TERN_QUEUE_METRICS_TOP_DESTINATIONS, minIntervalMs: 2_000 },
    operations: { limits, events },
  };
}
