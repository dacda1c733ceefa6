// Wires the ingress service: SMTP listeners (MX always; submission and
// submissions when TLS is configured) on the @tern/smtp engine, clients of
// policy and queue, gRPC health, /metrics. Ingress owns nothing durable.
import type http from 'node:http';
import { GrpcServer } from '@tern/grpc';
import { ConnectionLimiter, SmtpServer, type SmtpLimits } from '@tern/smtp';
import type { Telemetry } from '@tern/telemetry';
import { policyClient, queueClient } from './clients';
import type { Config } from './config';
import { EnqueueBatcher } from './enqueue-batch';
import { createHooks } from './hooks';
import { MilterDirectory } from './milters';
import { observeSmtpTraffic, type IngressMetrics } from './metrics';
import { DecisionCache } from './policy-check';
import { QueueStatusCache } from './queue-gate';
import { TlsContextManager } from './tls';

export interface AppDeps {
  telemetry: Pick<Telemetry, 'logger' | 'tracer' | 'meter' | 'serveMetrics'>;
  /** Tests: serve no /metrics endpoint. */
  noMetricsServer?: boolean;
}

export interface App {
  start(): Promise<void>;
  stop(): Promise<void>;
  /** Bound ports (useful with port 0 in tests); undefined when a listener is not running. */
  readonly ports: { smtp?: number; submission?: number; submissions?: number; grpc: number };
  readonly tls: TlsContextManager | undefined;
  /** The milter chain as last read from policy (refresh() reads it now). */
  readonly milters: MilterDirectory;
  /** Ready: listening, not stopping, queue reachable. */
  ready(): boolean;
}

export function createApp(config: Config, deps: AppDeps): App {
  const { logger, tracer, meter } = deps.telemetry;
  const policy = policyClient(config.TERN_POLICY_ADDR, config.TERN_POLICY_DEADLINE_MS);
  const queue = queueClient(config.TERN_QUEUE_ADDR, config.TERN_QUEUE_STATUS_DEADLINE_MS);
  const batcher = config.TERN_ENQUEUE_BATCH_BODY_MAX
    ? new EnqueueBatcher(queue, { maxCalls: config.TERN_ENQUEUE_BATCH_CALLS, maxMessages: 64, deadlineMs: config.TERN_ENQUEUE_COMMIT_TIMEOUT_MS })
    : undefined;
  const queueStatus = new QueueStatusCache(queue, config.TERN_QUEUE_STATUS_CACHE_MS, config.TERN_QUEUE_STATUS_DEADLINE_MS, logger);
  const tls =
    config.TERN_TLS_CERT_FILE && config.TERN_TLS_KEY_FILE
      ? new TlsContextManager(config.TERN_TLS_CERT_FILE, config.TERN_TLS_KEY_FILE, logger)
      : undefined;
  tls?.observe(meter);
  const metrics: IngressMetrics = {
    sessions: meter.createCounter('tern_ingress_sessions_total', { description: 'SMTP sessions started' }),
    decisions: meter.createCounter('tern_ingress_policy_decisions_total', { description: 'Policy answers by stage and result' }),
    messages: meter.createCounter('tern_ingress_messages_total', { description: 'Messages by outcome (queued, refused, enqueue_error)' }),
    bytes: meter.createCounter('tern_ingress_bytes_total', { description: 'Message octets queued' }),
    enqueueSeconds: meter.createHistogram('tern_ingress_enqueue_seconds', { description: 'End of 354 to queue commit, seconds', unit: 's' }),
  };
  const limits: Partial<SmtpLimits> = {
    maxMessageSize: config.TERN_MAX_MESSAGE_SIZE,
    maxRecipients: config.TERN_MAX_RECIPIENTS,
    maxErrors: config.TERN_MAX_ERRORS,
    unavailableCloseMs: config.TERN_UNAVAILABLE_CLOSE_MS,
    maxSessions: config.TERN_MAX_SESSIONS,
    maxSessionsPerClient: config.TERN_MAX_SESSIONS_PER_CLIENT,
    commandTimeoutMs: config.TERN_SMTP_COMMAND_TIMEOUT_MS,
    dataTimeoutMs: config.TERN_SMTP_DATA_TIMEOUT_MS,
    greetingDelayMs: config.TERN_GREETING_DELAY_MS,
  };
  // The milter chain, read from policy every few seconds.
  const milterDirectory = new MilterDirectory(policy, config.TERN_MILTER_REFRESH_MS, config.TERN_POLICY_DEADLINE_MS, logger);
  const milters = {
    directory: milterDirectory,
    metrics: {
      calls: meter.createCounter('tern_ingress_milter_calls_total', { description: 'Milter conversations by milter and result (accept, reject, tempfail, discard, error)' }),
      seconds: meter.createHistogram('tern_ingress_milter_seconds', { description: 'One milter conversation (connect to final answer), seconds', unit: 's' }),
    },
    spoolDir: config.TERN_MILTER_SPOOL_DIR,
    spoolMemory: config.TERN_MILTER_SPOOL_MEMORY,
    maxBody: config.TERN_MAX_MESSAGE_SIZE,
  };
  const limiter = new ConnectionLimiter(config.TERN_MAX_SESSIONS, config.TERN_MAX_SESSIONS_PER_CLIENT);
  // Policy accepts marked reusable (cache_ms) are given again without a call.
  const decisions = new DecisionCache();
  meter
    .createObservableCounter('tern_ingress_policy_cache_hits_total', { description: 'Policy checks answered from reusable accepts (CheckResponse.cache_ms)' })
    .addCallback((r) => r.observe(decisions.hits));
  const hookDeps = {
    decisions,
    hostname: config.TERN_HOSTNAME,
    logger,
    tracer,
    policy,
    queue,
    queueStatus,
    metrics,
    policyDeadlineMs: config.TERN_POLICY_DEADLINE_MS,
    commitTimeoutMs: config.TERN_ENQUEUE_COMMIT_TIMEOUT_MS,
    reverseDns: config.TERN_REVERSE_DNS ? { timeoutMs: config.TERN_REVERSE_DNS_TIMEOUT_MS } : undefined,
    messageChecks: config.TERN_MESSAGE_CHECKS.size ? { listeners: config.TERN_MESSAGE_CHECKS, timeoutMs: config.TERN_MESSAGE_CHECK_TIMEOUT_MS } : undefined,
    commands: { vrfy: config.TERN_VRFY, expn: config.TERN_EXPN, etrn: config.TERN_ETRN },
    maxRecipients: config.TERN_MAX_RECIPIENTS,
    enqueueBatch: batcher ? { bodyMax: config.TERN_ENQUEUE_BATCH_BODY_MAX, batcher } : undefined,
    milters,
  };
  const common = {
    hostname: config.TERN_HOSTNAME,
    proxyProtocolFrom: config.TERN_PROXY_PROTOCOL_CIDRS,
    limits,
    limiter,
    logger,
  };
  const servers: Record<'mx' | 'submission' | 'submissions', SmtpServer | undefined> = {
    mx: undefined,
    submission: undefined,
    submissions: undefined,
  };
  // Open sessions per listener: what the chart's HorizontalPodAutoscaler can
  // scale on (through a metrics adapter) besides CPU.
  meter
    .createObservableGauge('tern_ingress_active_sessions', { description: 'SMTP sessions open now, by listener' })
    .addCallback((result) => {
      for (const [listener, server] of Object.entries(servers)) if (server) result.observe(server.sessionCount, { listener });
    });
  observeSmtpTraffic(meter, servers);
  if (config.TERN_SMTP_LISTEN) {
    servers.mx = new SmtpServer(
      {
        ...common,
        name: 'mx',
        host: config.TERN_SMTP_LISTEN.host,
        port: config.TERN_SMTP_LISTEN.port,
        ...(tls ? { tls: { secureContext: tls.current } } : {}),
      },
      createHooks(hookDeps, false),
    );
  }
  if (tls) {
    // AUTH is offered on the submission listeners only.
    const submissionHooks = createHooks(hookDeps, true);
    if (config.TERN_SUBMISSION_LISTEN) {
      servers.submission = new SmtpServer(
        {
          ...common,
          name: 'submission',
          host: config.TERN_SUBMISSION_LISTEN.host,
          port: config.TERN_SUBMISSION_LISTEN.port,
          tls: { secureContext: tls.current },
          authRequired: true,
        },
        submissionHooks,
      );
    }
    if (config.TERN_SUBMISSIONS_LISTEN) {
      servers.submissions = new SmtpServer(
        {
          ...common,
          name: 'submissions',
          host: config.TERN_SUBMISSIONS_LISTEN.host,
          port: config.TERN_SUBMISSIONS_LISTEN.port,
          tls: { secureContext: tls.current },
          implicitTls: true,
          authRequired: true,
        },
        submissionHooks,
      );
    }
  }

  // Readiness (/readyz and gRPC health alike): started, not stopping, queue reachable.
  const grpcServer = new GrpcServer({ logger, tracer, ready: () => queueStatus.reachable });
  let metricsServer: http.Server | undefined;
  let statusTimer: NodeJS.Timeout | undefined;
  const ports = { grpc: 0 } as App['ports'];

  return {
    tls,
    milters: milterDirectory,
    get ports() {
      return ports;
    },
    ready: () => grpcServer.ready(),
    async start() {
      if (!deps.noMetricsServer) {
        metricsServer = await deps.telemetry.serveMetrics(config.TERN_METRICS_LISTEN.host, config.TERN_METRICS_LISTEN.port, () => grpcServer.ready());
      }
      ports.grpc = await grpcServer.listen(config.TERN_GRPC_LISTEN.host, config.TERN_GRPC_LISTEN.port);
      tls?.start(config.TERN_TLS_RELOAD_MS);
      await queueStatus.refresh();
      milterDirectory.start();
      statusTimer = setInterval(() => void queueStatus.refresh(), config.TERN_QUEUE_STATUS_CACHE_MS);
      statusTimer.unref();
      for (const [name, server] of Object.entries(servers)) {
        if (server) ports[name === 'mx' ? 'smtp' : (name as 'submission' | 'submissions')] = await server.listen();
      }
      grpcServer.serve();
      logger.info(
        {
          smtp: ports.smtp,
          submission: ports.submission,
          submissions: ports.submissions,
          grpc: ports.grpc,
          tls: Boolean(tls),
          policy: config.TERN_POLICY_ADDR,
          queue: config.TERN_QUEUE_ADDR,
        },
        tls ? 'ingress serving' : 'ingress serving (no TLS configured: MX without STARTTLS, submission listeners off)',
      );
    },
    async stop() {
      // Not ready first, so the load balancer stops sending new sessions.
      grpcServer.drain();
      // Transactions in progress get the whole grace period, so a client
      // mid-body need not resend; closing the rest (421, 2 s) fits in
      // libs/runtime's tail after the grace. policy, queue and the batcher
      // close only once every session is gone: a transaction that ends in
      // time still gets its 250.
      await Promise.all(Object.values(servers).map((s) => s?.close(config.TERN_SHUTDOWN_GRACE_MS)));
      if (statusTimer) clearInterval(statusTimer);
      milterDirectory.stop();
      tls?.stop();
      await grpcServer.shutdown(1_000);
      batcher?.close();
      policy.close();
      queue.close();
      await new Promise<void>((resolve) => (metricsServer ? metricsServer.close(() => resolve()) : resolve()));
    },
  };
}
