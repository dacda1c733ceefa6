// Wires the ingress service: SMTP listeners (MX always; submission and
// submissions when TLS is configured) on the @tern/smtp engine, clients of
// policy and queue, gRPC health, /metrics, each a part started in order and
// stopped in reverse (libs/runtime Components). Ingress owns nothing durable.
import { GrpcServer } from '@tern/grpc';
import { Components, HttpServerPart, part, together, type AppDeps } from '@tern/runtime';
import { ConnectionLimiter, SmtpServer } from '@tern/smtp';
import { policyClient, queueClient } from './clients';
import type { Config } from './config';
import { EnqueueBatcher } from './enqueue-batch';
import { createHooks } from './hooks';
import { MilterDirectory } from './milters';
import { observeSmtpTraffic, type IngressMetrics } from './metrics';
import { DecisionCache } from './policy-check';
import { QueueStatusCache } from './queue-gate';
import { compileOptions } from './options';
import { TlsContextManager } from './tls';

export type { AppDeps };

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
  const o = compileOptions(config);
  const policy = policyClient(o.policy.addr, o.policy.deadlineMs);
  const queue = queueClient(o.queue.addr, o.queue.statusDeadlineMs);
  const batcher = o.enqueueBatch ? new EnqueueBatcher(queue, o.enqueueBatch) : undefined;
  const queueStatus = new QueueStatusCache(queue, o.queue.statusCacheMs, o.queue.statusDeadlineMs, logger);
  const tls = o.tls ? new TlsContextManager(o.tls.certFile, o.tls.keyFile, logger) : undefined;
  tls?.observe(meter);
  const metrics: IngressMetrics = {
    sessions: meter.createCounter('tern_ingress_sessions_total', { description: 'SMTP sessions started' }),
    decisions: meter.createCounter('tern_ingress_policy_decisions_total', { description: 'Policy answers by stage and result' }),
    messages: meter.createCounter('tern_ingress_messages_total', { description: 'Messages by outcome (queued, refused, enqueue_error)' }),
    bytes: meter.createCounter('tern_ingress_bytes_total', { description: 'Message octets queued' }),
    enqueueSeconds: meter.createHistogram('tern_ingress_enqueue_seconds', { description: 'End of 354 to queue commit, seconds', unit: 's' }),
  };
  // The milter chain, read from policy every few seconds.
  const milterDirectory = new MilterDirectory(policy, o.milters.refreshMs, o.policy.deadlineMs, logger);
  const milters = {
    directory: milterDirectory,
    metrics: {
      calls: meter.createCounter('tern_ingress_milter_calls_total', { description: 'Milter conversations by milter and result (accept, reject, tempfail, discard, error)' }),
      seconds: meter.createHistogram('tern_ingress_milter_seconds', { description: 'One milter conversation (connect to final answer), seconds', unit: 's' }),
    },
    spoolDir: o.milters.spoolDir,
    spoolMemory: o.milters.spoolMemory,
    maxBody: o.milters.maxBody,
  };
  const limiter = new ConnectionLimiter(o.sessions.max, o.sessions.perClient);
  // Policy accepts marked reusable (cache_ms) are given again without a call.
  const decisions = new DecisionCache();
  meter
    .createObservableCounter('tern_ingress_policy_cache_hits_total', { description: 'Policy checks answered from reusable accepts (CheckResponse.cache_ms)' })
    .addCallback((r) => r.observe(decisions.hits));
  const hookDeps = {
    ...o.hooks,
    decisions,
    logger,
    tracer,
    policy,
    queue,
    queueStatus,
    metrics,
    enqueueBatch: batcher && o.enqueueBatch ? { bodyMax: o.enqueueBatch.bodyMax, batcher } : undefined,
    milters,
  };
  const common = { ...o.smtp, limiter, logger };
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
  if (o.listeners.mx) {
    servers.mx = new SmtpServer(
      {
        ...common,
        name: 'mx',
        host: o.listeners.mx.host,
        port: o.listeners.mx.port,
        ...(tls ? { tls: { secureContext: tls.current } } : {}),
      },
      createHooks(hookDeps, false),
    );
  }
  if (tls) {
    // AUTH is offered on the submission listeners only.
    const submissionHooks = createHooks(hookDeps, true);
    if (o.listeners.submission) {
      servers.submission = new SmtpServer(
        {
          ...common,
          name: 'submission',
          host: o.listeners.submission.host,
          port: o.listeners.submission.port,
          tls: { secureContext: tls.current },
          authRequired: true,
        },
        submissionHooks,
      );
    }
    if (o.listeners.submissions) {
      servers.submissions = new SmtpServer(
        {
          ...common,
          name: 'submissions',
          host: o.listeners.submissions.host,
          port: o.listeners.submissions.port,
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
  const ports = { grpc: 0 } as App['ports'];
  let statusTimer: NodeJS.Timeout | undefined;

  // Started in this order, stopped in reverse. Not ready first, so the load
  // balancer stops sending new sessions; then the SMTP listeners close
  // together: transactions in progress get the whole grace period, so a
  // client mid-body need not resend, and closing the rest (421, 2 s) fits
  // in libs/runtime's tail after the grace. policy, queue and the batcher
  // close last, once every session is gone: a transaction that ends in time
  // still gets its 250.
  const parts = new Components(logger);
  parts.add('clients', part('clients', { drain: () => (batcher?.close(), policy.close(), queue.close()) }));
  if (!deps.noMetricsServer) {
    parts.add('metrics', new HttpServerPart('metrics', () => deps.telemetry.serveMetrics(o.listen.metrics.host, o.listen.metrics.port, () => grpcServer.ready())));
  }
  parts.add('grpc', grpcServer.listener(o.listen.grpc.host, o.listen.grpc.port, 1_000));
  if (tls) parts.add('tls reload', part('TLS reload', { start: () => tls.start(o.tls!.reloadMs), drain: () => tls.stop() }));
  parts.add(
    'queue status',
    part('queue status', {
      start: async () => {
        await queueStatus.refresh();
        statusTimer = setInterval(() => void queueStatus.refresh(), o.queue.statusCacheMs);
        statusTimer.unref();
      },
      drain: () => clearInterval(statusTimer),
    }),
  );
  parts.add('milter refresh', part('milter refresh', { start: () => milterDirectory.start(), drain: () => milterDirectory.stop() }));
  const listeners = (Object.entries(servers) as ['mx' | 'submission' | 'submissions', SmtpServer | undefined][]).flatMap(([name, server]) =>
    server
      ? [
          part(`SMTP ${name}`, {
            start: async () => {
              ports[name === 'mx' ? 'smtp' : name] = await server.listen();
            },
            drain: () => server.close(o.listen.graceMs),
          }),
        ]
      : [],
  );
  parts.add('smtp', together('SMTP listeners', listeners));
  parts.add('readiness', grpcServer.readiness());

  return {
    tls,
    milters: milterDirectory,
    get ports() {
      return ports;
    },
    ready: () => grpcServer.ready(),
    async start() {
      await parts.start();
      ports.grpc = grpcServer.port;
      logger.info(
        {
          smtp: ports.smtp,
          submission: ports.submission,
          submissions: ports.submissions,
          grpc: ports.grpc,
          tls: Boolean(tls),
          policy: o.policy.addr,
          queue: o.queue.addr,
        },
        tls ? 'ingress serving' : 'ingress serving (no TLS configured: MX without STARTTLS, submission listeners off)',
      );
    },
    stop: () => parts.stop(),
  };
}
