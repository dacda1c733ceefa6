// Wires the policy service: Postgres pool, the in-memory policy data kept
// fresh by LISTEN/NOTIFY, the decision engine, and the gRPC server. Health
// turns SERVING once the data is loaded.
import type http from 'node:http';
import { createPool } from '@tern/db';
import { GrpcServer } from '@tern/grpc';
import { PolicyServiceService } from '@tern/proto';
import type { Telemetry } from '@tern/telemetry';
import { PolicyCache } from './cache';
import type { Config } from './config';
import { Engine } from './engine';
import { createPolicyService } from './service';
import { PolicyStore } from './store';

export interface AppDeps {
  telemetry: Pick<Telemetry, 'logger' | 'tracer' | 'meter' | 'serveMetrics'>;
  /** Tests: serve no /metrics endpoint. */
  noMetricsServer?: boolean;
}

export interface App {
  start(): Promise<void>;
  stop(): Promise<void>;
  /** Bound gRPC port (useful with port 0). */
  readonly grpcPort: number;
  readonly cache: PolicyCache;
}

export function createApp(config: Config, deps: AppDeps): App {
  const { logger, tracer, meter } = deps.telemetry;
  const pool = createPool({ url: config.TERN_DATABASE_URL, max: config.TERN_DATABASE_POOL_MAX, applicationName: 'tern-policy', logger });
  const store = new PolicyStore(pool);
  const snapshots = meter.createHistogram('tern_policy_reload_duration_seconds', { description: 'Full reload of the policy data', unit: 's' });
  const cache = new PolicyCache({
    store,
    databaseUrl: config.TERN_DATABASE_URL,
    reloadMs: config.TERN_POLICY_RELOAD_MS,
    logger,
    onReload: (s, ms) => {
      snapshots.record(ms / 1000);
      logger.debug({ domains: s.domains.size, mailboxes: s.mailboxes.size, aliases: s.aliases.size, users: s.users.size, ms }, 'policy data loaded');
    },
  });
  const engine = new Engine(
    {
      trustedNetworks: config.TERN_TRUSTED_NETWORKS,
      recipientDelimiter: config.TERN_RECIPIENT_DELIMITER,
      maxMessageSize: config.TERN_MAX_MESSAGE_SIZE,
    },
    () => cache.snapshot,
  );
  const grpcServer = new GrpcServer({ logger, tracer });
  grpcServer.add('tern.v1.PolicyService', PolicyServiceService, createPolicyService({ store, cache, engine, logger, meter }));
  let metricsServer: http.Server | undefined;

  return {
    cache,
    get grpcPort() {
      return grpcServer.port;
    },
    async start() {
      await cache.start();
      if (!deps.noMetricsServer) {
        metricsServer = await deps.telemetry.serveMetrics(config.TERN_METRICS_LISTEN.host, config.TERN_METRICS_LISTEN.port, () => cache.ready);
      }
      const port = await grpcServer.listen(config.TERN_GRPC_LISTEN.host, config.TERN_GRPC_LISTEN.port);
      grpcServer.setStatus('SERVING');
      logger.info({ grpc: port, trustedNetworks: config.TERN_TRUSTED_NETWORKS.map(([a, b]) => `${a.toString()}/${b}`) }, 'policy serving');
    },
    async stop() {
      await grpcServer.shutdown(config.TERN_SHUTDOWN_GRACE_MS);
      await cache.stop();
      await new Promise<void>((resolve) => (metricsServer ? metricsServer.close(() => resolve()) : resolve()));
      await pool.end();
    },
  };
}
