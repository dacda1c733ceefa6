// Wires the webhooks service: the durable JetStream consumer `webhooks` on
// TERN_EVENTS (each NATS message's deliveries written in one transaction,
// then acked: at least once, a redelivery writes nothing twice), the sender
// loop (sender.ts), the housekeeping sweep (expiry, history), WebhookService
// on gRPC with health, and /metrics, each a part started in order and
// stopped in reverse (libs/runtime Components). The events stream is a log
// the queue never waits for, so nothing here can slow mail.
import { BusPart, type BusMessage } from '@tern/bus';
import { redactUrl } from '@tern/config';
import { createPool, type Pool } from '@tern/db';
import { GrpcServer } from '@tern/grpc';
import { WebhookServiceService } from '@tern/proto';
import { Components, errorMessage, HttpServerPart, part, type AppDeps } from '@tern/runtime';
import type { AddressRules } from './address';
import type { Config } from './config';
import { decodeEvents } from './events';
import { Sender } from './sender';
import { createWebhookService } from './service';
import { WebhookStore } from './store';

export type { AppDeps };

export interface App {
  start(): Promise<void>;
  stop(): Promise<void>;
  readonly ports: { grpc: number; metrics?: number };
  ready(): boolean;
}

/** How often expired deliveries are dropped and old history removed. */
const SWEEP_MS = 5_000;

export function createApp(config: Config, deps: AppDeps): App {
  const { logger, tracer, meter } = deps.telemetry;
  const pool: Pool = createPool({ url: config.TERN_DATABASE_URL, max: 8, applicationName: 'tern-webhooks', logger });
  const store = new WebhookStore(pool, config.TERN_WEBHOOKS_KEK);
  const rules: AddressRules = { allowHttp: config.TERN_WEBHOOKS_ALLOW_HTTP, allowPrivate: config.TERN_WEBHOOKS_ALLOW_PRIVATE };
  const metrics = {
    deliveries: meter.createCounter('tern_webhooks_deliveries_total', {
      description: 'Webhook deliveries (one event for one endpoint) by result: delivered, retry (an attempt failed), expired, overflow (not queued: endpoint full), too_large (not queued)',
    }),
    attemptSeconds: meter.createHistogram('tern_webhooks_attempt_seconds', { description: 'One webhook request, start to answer, seconds', unit: 's' }),
    changes: meter.createCounter('tern_webhooks_endpoint_changes_total', { description: 'Webhook endpoint changes through the API by action' }),
  };
  const sender = new Sender(
    store,
    {
      concurrency: config.TERN_WEBHOOKS_CONCURRENCY,
      endpointConcurrency: config.TERN_WEBHOOKS_ENDPOINT_CONCURRENCY,
      batchMax: config.TERN_WEBHOOKS_BATCH_MAX,
      batchMaxBytes: config.TERN_WEBHOOKS_BATCH_MAX_BYTES,
      retryMinMs: config.TERN_WEBHOOKS_RETRY_MIN_MS,
      retryMaxMs: config.TERN_WEBHOOKS_RETRY_MAX_MS,
      failuresToSuspend: config.TERN_WEBHOOKS_FAILURES_TO_SUSPEND,
      pollMs: config.TERN_WEBHOOKS_POLL_MS,
      timeoutMs: config.TERN_WEBHOOKS_TIMEOUT_MS,
    },
    {
      ...rules,
      connectTimeoutMs: config.TERN_WEBHOOKS_CONNECT_TIMEOUT_MS,
      timeoutMs: config.TERN_WEBHOOKS_TIMEOUT_MS,
    },
    metrics,
    logger,
  );
  // From the sender's last read of the endpoints (every tick).
  meter.createObservableGauge('tern_webhooks_pending_deliveries', { description: 'Webhook deliveries not yet delivered or dropped, all endpoints' }).addCallback((r) => {
    r.observe(sender.snapshot().reduce((sum, e) => sum + e.pending, 0));
  });
  meter.createObservableGauge('tern_webhooks_endpoints', { description: 'Webhook endpoints by state (active, suspended)' }).addCallback((r) => {
    const eps = sender.snapshot();
    r.observe(eps.filter((e) => e.state === 'active').length, { state: 'active' });
    r.observe(eps.filter((e) => e.state === 'suspended').length, { state: 'suspended' });
  });

  const nats = new BusPart({ url: config.TERN_NATS_URL, name: `tern-webhooks-${config.TERN_HOSTNAME}`, logger }, ['webhooks']);
  let sweeper: NodeJS.Timeout | undefined;
  // Ready: consuming with NATS not closed, and Postgres answered the sender within 10 s.
  const grpcServer = new GrpcServer({
    logger,
    tracer,
    ready: () => nats.open && Date.now() - sender.lastRefresh < Math.max(10_000, 3 * config.TERN_WEBHOOKS_POLL_MS),
  });
  grpcServer.add(
    'tern.v1.WebhookService',
    WebhookServiceService,
    createWebhookService({ store, rules, maxEndpoints: config.TERN_WEBHOOKS_MAX_ENDPOINTS, logger, changes: metrics.changes, wake: () => sender.wake() }),
  );

  async function handle(msg: BusMessage): Promise<void> {
    let events;
    try {
      events = decodeEvents(msg.data);
    } catch (err) {
      logger.error({ event: 'webhook_event_undecodable', subject: msg.subject, bytes: msg.data.length, err: errorMessage(err) }, 'undecodable lifecycle events message skipped');
      msg.term('');
      return;
    }
    const outcome = await store.enqueue(events, {
      lifetimeS: config.TERN_WEBHOOKS_LIFETIME_S,
      maxPending: config.TERN_WEBHOOKS_MAX_PENDING,
      eventMaxBytes: config.TERN_WEBHOOKS_EVENT_MAX_BYTES,
    });
    // Only now, with the deliveries committed, may the message go.
    msg.ack();
    for (const [endpointId, n] of outcome.overflow) {
      metrics.deliveries.add(n, { result: 'overflow' });
      logger.warn(
        { event: 'webhook_overflow', endpoint_id: endpointId, events: n, max_pending: config.TERN_WEBHOOKS_MAX_PENDING },
        `webhook endpoint ${endpointId} has ${config.TERN_WEBHOOKS_MAX_PENDING} pending deliveries (TERN_WEBHOOKS_MAX_PENDING): ${n} new event(s) not queued for it`,
      );
    }
    for (const e of outcome.tooLarge) {
      metrics.deliveries.add(1, { result: 'too_large' });
      logger.warn({ event: 'webhook_event_too_large', event_id: e.eventId, queue_id: e.queueId }, `event ${e.eventId} is larger than TERN_WEBHOOKS_EVENT_MAX_BYTES: not sent to webhooks`);
    }
    if (outcome.inserted) sender.wake();
  }

  async function sweep(): Promise<void> {
    try {
      const expired = await store.expire();
      for (const [endpointId, n] of expired) {
        metrics.deliveries.add(n, { result: 'expired' });
        logger.warn(
          { event: 'webhook_expired', endpoint_id: endpointId, deliveries: n, lifetime_s: config.TERN_WEBHOOKS_LIFETIME_S },
          `${n} webhook deliveries to ${endpointId} dropped: not delivered within TERN_WEBHOOKS_LIFETIME_S`,
        );
      }
      await store.purge(config.TERN_WEBHOOKS_HISTORY_S);
    } catch (err) {
      logger.warn({ event: 'webhooks_sweep_failed', err: errorMessage(err) }, 'webhooks housekeeping failed; trying again');
    }
  }

  const isReady = () => grpcServer.ready();

  // Started in this order, stopped in reverse: not ready first; then no
  // new sweeps, no new events (those in hand are committed and acked), the
  // sender's requests in flight finish (bounded by their timeout), NATS,
  // the gRPC listener, the pool and last /metrics.
  const parts = new Components(logger);
  const metricsServer = deps.noMetricsServer
    ? undefined
    : parts.add('metrics', new HttpServerPart('metrics', () => deps.telemetry.serveMetrics(config.TERN_METRICS_LISTEN.host, config.TERN_METRICS_LISTEN.port, isReady)));
  parts.add('pool', part('Postgres pool', { drain: () => pool.end() }));
  parts.add(
    'secrets',
    part('stored secrets', {
      start: async () => {
        const sealed = await store.checkSecrets();
        if (sealed) logger.info({ endpoints: sealed }, 'stored webhook secrets open with TERN_WEBHOOKS_KEK');
      },
    }),
  );
  parts.add('grpc', grpcServer.listener(config.TERN_GRPC_LISTEN.host, config.TERN_GRPC_LISTEN.port, 1_000));
  parts.add('nats', nats);
  parts.add('sender', part('sender', { start: () => sender.start(), drain: () => sender.stop() }));
  parts.add('consumer', nats.consumer('webhooks', handle, { concurrency: config.TERN_WEBHOOKS_CONSUMER_CONCURRENCY, retryDelayMs: 2_000 }));
  parts.add(
    'sweeper',
    part('sweeper', {
      start: () => {
        sweeper = setInterval(() => void sweep(), SWEEP_MS);
      },
      drain: () => clearInterval(sweeper),
    }),
  );
  parts.add('readiness', grpcServer.readiness());

  return {
    get ports() {
      return { grpc: grpcServer.port, metrics: metricsServer?.port };
    },
    ready: isReady,
    async start() {
      await parts.start();
      logger.info(
        {
          grpc: grpcServer.port,
          metrics: metricsServer?.port,
          nats: redactUrl(config.TERN_NATS_URL),
          secrets: config.TERN_WEBHOOKS_KEK ? 'sealed' : 'stored unsealed (set TERN_WEBHOOKS_KEK to seal them)',
          allow_http: rules.allowHttp,
          allow_private: rules.allowPrivate,
        },
        'webhooks serving',
      );
    },
    stop: () => parts.stop(),
  };
}
