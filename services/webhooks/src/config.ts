// Process settings of the webhooks service, read once from the environment.
// Keys are the variable names, so a bad value is reported by its name.
import { bool, commonSchema, ConfigError, keyEncryptionKey, natsUrl, parseEnv, positiveInt, postgresUrl, z } from '@tern/config';

const schema = z.object({
  ...commonSchema({ grpcPort: 7006, metricsPort: 9106 }),
  TERN_DATABASE_URL: postgresUrl(),
  TERN_NATS_URL: natsUrl(),
  /** Seals endpoint secrets at rest (AES-256-GCM); unset: stored as they are (still never returned after creation). */
  TERN_WEBHOOKS_KEK: keyEncryptionKey().optional(),
  /** Allow http:// endpoint URLs (never to a public address): for receivers inside the cluster, and tests. */
  TERN_WEBHOOKS_ALLOW_HTTP: bool(false),
  /** Allow endpoints whose address is loopback, private, link-local or otherwise not public (SSRF guard off). */
  TERN_WEBHOOKS_ALLOW_PRIVATE: bool(false),
  /** A delivery not answered 2xx within this long of its event is dropped (and counted). */
  TERN_WEBHOOKS_LIFETIME_S: positiveInt(86_400),
  /** Failed attempts in a row (the endpoint backing off between them) after which an endpoint is suspended. */
  TERN_WEBHOOKS_FAILURES_TO_SUSPEND: positiveInt(20),
  /** Backoff after a failed attempt: doubling from min to max, with jitter. */
  TERN_WEBHOOKS_RETRY_MIN_MS: positiveInt(5_000),
  TERN_WEBHOOKS_RETRY_MAX_MS: positiveInt(3_600_000),
  /** Time to open the connection (TCP and TLS). */
  TERN_WEBHOOKS_CONNECT_TIMEOUT_MS: positiveInt(10_000),
  /** Time for a whole request, from start to the end of the answer. */
  TERN_WEBHOOKS_TIMEOUT_MS: positiveInt(10_000),
  /** Requests in flight from this pod, all endpoints together. */
  TERN_WEBHOOKS_CONCURRENCY: positiveInt(64),
  /** Requests in flight from this pod to one endpoint. */
  TERN_WEBHOOKS_ENDPOINT_CONCURRENCY: positiveInt(4),
  /** Events in one request to a batch endpoint. */
  TERN_WEBHOOKS_BATCH_MAX: positiveInt(100),
  /** Bytes of one request body to a batch endpoint (a single event may exceed it up to TERN_WEBHOOKS_EVENT_MAX_BYTES). */
  TERN_WEBHOOKS_BATCH_MAX_BYTES: positiveInt(1024 * 1024),
  /** An event whose JSON is larger is not delivered (counted, logged). */
  TERN_WEBHOOKS_EVENT_MAX_BYTES: positiveInt(256 * 1024),
  /** Pending deliveries per endpoint; new events beyond it are not queued for it (counted, logged). */
  TERN_WEBHOOKS_MAX_PENDING: positiveInt(100_000),
  /** Endpoints at most. */
  TERN_WEBHOOKS_MAX_ENDPOINTS: positiveInt(1_000),
  /** How often due deliveries are looked for (new events wake the sender at once). */
  TERN_WEBHOOKS_POLL_MS: positiveInt(1_000),
  /** Delivered and dropped deliveries are listed this long, then removed. */
  TERN_WEBHOOKS_HISTORY_S: positiveInt(86_400),
  /** NATS event messages processed at once by this pod. */
  TERN_WEBHOOKS_CONSUMER_CONCURRENCY: positiveInt(4),
});

export type Config = z.infer<typeof schema>;

export function loadConfig(env: Record<string, string | undefined> = process.env): Config {
  const config = parseEnv(schema, env);
  const problems: Array<{ variable: string; message: string }> = [];
  if (config.TERN_WEBHOOKS_RETRY_MIN_MS > config.TERN_WEBHOOKS_RETRY_MAX_MS) {
    problems.push({ variable: 'TERN_WEBHOOKS_RETRY_MIN_MS', message: 'must not exceed TERN_WEBHOOKS_RETRY_MAX_MS' });
  }
  if (config.TERN_WEBHOOKS_CONNECT_TIMEOUT_MS > config.TERN_WEBHOOKS_TIMEOUT_MS) {
    problems.push({ variable: 'TERN_WEBHOOKS_CONNECT_TIMEOUT_MS', message: 'must not exceed TERN_WEBHOOKS_TIMEOUT_MS (the whole request)' });
  }
  if (config.TERN_WEBHOOKS_ENDPOINT_CONCURRENCY > config.TERN_WEBHOOKS_CONCURRENCY) {
    problems.push({ variable: 'TERN_WEBHOOKS_ENDPOINT_CONCURRENCY', message: 'must not exceed TERN_WEBHOOKS_CONCURRENCY' });
  }
  if (problems.length) {
    throw new ConfigError(`invalid configuration:\n${problems.map((p) => `  ${p.variable}: ${p.message}`).join('\n')}`, problems);
  }
  return config;
}
