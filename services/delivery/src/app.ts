// Wires the delivery service: the shared durable JetStream consumer
// `delivery` on tern.jobs.>, the next-hop resolver, the SMTP connection pool,
// the queue client (ReadBody), gRPC health and /metrics. Delivery owns
// nothing durable: a job is acked only after its result is published, so a
// crash means the job is redelivered (or its lease brings it back).
import fs from 'node:fs';
import type http from 'node:http';
import os from 'node:os';
import { Bus, type BusMessage, type Consumption } from '@tern/bus';
import { createClient, GrpcServer } from '@tern/grpc';
import { DeliveryJob, DeliveryServiceService, AttemptOutcome, PolicyServiceClient, QueueServiceClient } from '@tern/proto';
import { context, withSpan, type Telemetry } from '@tern/telemetry';
import type { Config } from './config';
import { DaneResolver } from './dane';
import { DkimSigner, parseDkimKeys } from './dkim';
import { DkimRefresh } from './dkim-refresh';
import { MtaStsPolicies } from './mta-sts';
import { NextHopResolver } from './nexthop';
import { ConnectionPool } from './pool';
import { deliver, BodyUnavailableError, type WorkerDeps } from './worker';
import { ResultPublisher } from './results';
import { RouteCache, Verifier } from './verify';

export interface AppDeps {
  telemetry: Pick<Telemetry, 'logger' | 'tracer' | 'meter' | 'serveMetrics'>;
}

export interface App {
  start(): Promise<void>;
  stop(): Promise<void>;
}

export function createApp(config: Config, deps: AppDeps): App {
  const { logger, tracer, meter } = deps.telemetry;
  const heloName = config.TERN_HELO_NAME ?? config.TERN_HOSTNAME;
  const queue = createClient(QueueServiceClient, config.TERN_QUEUE_ADDR, { deadlineMs: 0 });
  const pool = new ConnectionPool({
    maxMessagesPerConnection: config.TERN_SMTP_MAX_MESSAGES_PER_CONNECTION,
    idleMs: config.TERN_SMTP_IDLE_MS,
    maxSessionsPerPeer: config.TERN_SMTP_MAX_SESSIONS_PER_PEER,
  });
  const resolver = new NextHopResolver({ servers: config.TERN_DNS_SERVERS, port: config.TERN_SMTP_PORT, ownNames: [heloName.toLowerCase(), config.TERN_HOSTNAME.toLowerCase()], timeoutMs: config.TERN_DNS_TIMEOUT_MS });
  const worker: WorkerDeps = {
    logger,
    resolver,
    pool,
    queue,
    worker: `${os.hostname()}/${process.pid}`,
    heloName,
    localAddress: config.TERN_SOURCE_ADDRESS,
    smtpPort: config.TERN_SMTP_PORT,
    connectTimeoutMs: config.TERN_SMTP_CONNECT_TIMEOUT_MS,
    commandTimeoutMs: config.TERN_SMTP_COMMAND_TIMEOUT_MS,
    dataEndTimeoutMs: config.TERN_SMTP_DATA_END_TIMEOUT_MS,
    queueDeadlineMs: config.TERN_QUEUE_DEADLINE_MS,
    tlsCa: readCa(config.TERN_SMTP_TLS_CA_FILE),
    dkim: dkimSigner(config.TERN_DKIM_KEYS, Boolean(config.TERN_POLICY_ADDR)),
    // Read at each use, so that a rotated secret is picked up without a restart.
    secretsDir: config.TERN_SMTP_AUTH_SECRETS_DIR,
  };
  // The admin API's DKIM keys, from policy, next to (and before) the files' keys.
  const policy = config.TERN_POLICY_ADDR ? createClient(PolicyServiceClient, config.TERN_POLICY_ADDR, { deadlineMs: 0 }) : undefined;
  const dkimRefresh = policy
    ? new DkimRefresh({ policy, kek: config.TERN_DKIM_KEK, signer: worker.dkim!, intervalMs: config.TERN_DKIM_REFRESH_MS, deadlineMs: 5_000, logger })
    : undefined;
  if (config.TERN_DANE) worker.dane = new DaneResolver({ servers: config.TERN_DNS_SERVERS, timeoutMs: config.TERN_DNS_TIMEOUT_MS });
  if (config.TERN_MTA_STS) worker.mtaSts = new MtaStsPolicies({ resolver, logger, port: config.TERN_MTA_STS_PORT, ca: worker.tlsCa, timeoutMs: 30_000 });
  const metrics = {
    recipients: meter.createCounter('tern_delivery_recipients_total', { description: 'Recipient results by outcome' }),
    seconds: meter.createHistogram('tern_delivery_job_seconds', { description: 'Job taken to result published, seconds', unit: 's' }),
  };
  // The pool counts these since start: counters, read when scraped.
  meter
    .createObservableCounter('tern_delivery_connections_opened_total', { description: 'SMTP connections opened (reused ones are not counted)' })
    .addCallback((o) => o.observe(pool.opened));
  meter
    .createObservableCounter('tern_delivery_connections_reused_total', { description: 'Transactions that took an idle SMTP/LMTP session instead of a new connection' })
    .addCallback((o) => o.observe(pool.reused));
  meter
    .createObservableCounter('tern_delivery_session_waits_total', { description: 'Jobs that waited for a session because their peer had TERN_SMTP_MAX_SESSIONS_PER_PEER open' })
    .addCallback((o) => o.observe(pool.waited));

  // Recipient verification for policy (relay domains with callout checks), on the gRPC port.
  const routes = new RouteCache(queue, config.TERN_VERIFY_ROUTES_REFRESH_MS, logger);
  const verifier = new Verifier(
    worker,
    routes,
    { sender: config.TERN_VERIFY_SENDER, timeoutMs: config.TERN_VERIFY_TIMEOUT_MS, maxInflight: config.TERN_VERIFY_MAX_INFLIGHT, maxSessionsPerPeer: config.TERN_SMTP_MAX_SESSIONS_PER_PEER },
    meter,
  );

  let bus: Bus | undefined;
  // Readiness (/readyz and gRPC health alike): consuming, NATS connection not closed, not stopping.
  const grpcServer = new GrpcServer({ logger, tracer, ready: () => bus !== undefined && !bus.nc.isClosed() && (dkimRefresh?.loaded ?? true) });
  grpcServer.add('tern.v1.DeliveryService', DeliveryServiceService, verifier.service());
  let metricsServer: http.Server | undefined;
  let results: ResultPublisher | undefined;
  let consumption: Consumption | undefined;

  async function handle(msg: BusMessage): Promise<void> {
    let job: DeliveryJob;
    try {
      job = DeliveryJob.decode(msg.data);
    } catch (err) {
      logger.error({ msg_id: msg.msgId, err: (err as Error).message }, 'undecodable delivery job dropped (its lease brings the recipients back)');
      msg.term('undecodable');
      return;
    }
    // Long sessions keep the ack timer from running out.
    const progress = setInterval(() => msg.working(), 20_000);
    const started = performance.now();
    try {
      await withSpan(
        tracer,
        'delivery.attempt',
        { 'tern.queue_id': job.queueId, 'tern.job_id': job.jobId, 'tern.destination': job.destination, 'tern.recipients': job.recipients.length },
        async (span) => {
          const result = await deliver(worker, job);
          if (result) {
            span.setAttribute('net.peer.name', result.remoteHost);
            span.setAttribute('net.peer.ip', result.remoteIp);
            await results!.publish(result);
            for (const r of result.recipients) metrics.recipients.add(1, { outcome: AttemptOutcome[r.outcome] ?? 'unknown' });
            logger.info(
              {
                event: 'delivery_attempt',
                queue_id: job.queueId,
                job_id: job.jobId,
                destination: job.destination,
                remote: `${result.remoteHost}[${result.remoteIp}]`,
                tls: result.tls?.used ?? false,
                outcomes: result.recipients.map((r) => `${r.reply?.code ?? 0}`).join(','),
                reply: result.recipients[0]?.reply?.text,
                ms: result.durationMs,
              },
              'delivery attempt finished',
            );
          }
        },
        msg.ctx,
      );
      msg.ack();
      metrics.seconds.record((performance.now() - started) / 1000);
    } catch (err) {
      // Ours, not the destination's (queue unreachable, NATS publish failed): redeliver the job later.
      const delay = err instanceof BodyUnavailableError ? 5_000 : 10_000;
      // Outside the attempt's span (it has ended), still in the message's trace.
      context.with(msg.ctx, () =>
        logger.warn({ queue_id: job.queueId, job_id: job.jobId, err: (err as Error).message, retry_ms: delay }, 'delivery job failed on our side; it will be retried'),
      );
      msg.nak(delay);
    } finally {
      clearInterval(progress);
    }
  }

  return {
    async start() {
      metricsServer = await deps.telemetry.serveMetrics(config.TERN_METRICS_LISTEN.host, config.TERN_METRICS_LISTEN.port, () => grpcServer.ready());
      await grpcServer.listen(config.TERN_GRPC_LISTEN.host, config.TERN_GRPC_LISTEN.port);
      bus = await Bus.connect({ url: config.TERN_NATS_URL, name: `tern-delivery-${os.hostname()}-${process.pid}`, logger });
      await bus.ensureTopology(['delivery']);
      // No job before the DKIM keys are in: a message must not leave unsigned because policy was slow.
      await dkimRefresh?.start();
      results = new ResultPublisher(bus, { maxResults: config.TERN_RESULT_BATCH_MAX, delayMs: config.TERN_RESULT_BATCH_DELAY_MS });
      consumption = bus.consume('delivery', handle, { concurrency: config.TERN_CONCURRENCY, retryDelayMs: 10_000 });
      routes.start();
      grpcServer.serve();
    },
    async stop() {
      grpcServer.drain();
      // Stop taking jobs and finish the ones in hand (the runtime's grace timer bounds it);
      // jobs fetched but not started are redelivered after the ack wait.
      dkimRefresh?.stop();
      routes.stop();
      await consumption?.stop();
      await results?.drain();
      await pool.close();
      await bus?.close();
      queue.close();
      policy?.close();
      await grpcServer.shutdown(2_000);
      await new Promise<void>((resolve) => (metricsServer ? metricsServer.close(() => resolve()) : resolve()));
    },
  };
}

/** The CA file, read once at start; an unreadable one stops the process naming the variable. */
function readCa(file: string | undefined): Buffer | undefined {
  if (!file) return undefined;
  try {
    return fs.readFileSync(file);
  } catch (err) {
    throw new Error(`TERN_SMTP_TLS_CA_FILE: cannot read ${file}: ${(err as Error).message}`, { cause: err });
  }
}

/** File keys read and checked once at start (a bad entry stops the process naming the variable); with policy, the API's keys join them. */
function dkimSigner(entries: string[], fromApi: boolean): DkimSigner | undefined {
  if (!entries.length) return fromApi ? new DkimSigner() : undefined;
  try {
    return new DkimSigner(parseDkimKeys(entries, (file) => fs.readFileSync(file, 'utf8')));
  } catch (err) {
    throw new Error(`TERN_DKIM_KEYS: ${(err as Error).message}`, { cause: err });
  }
}
