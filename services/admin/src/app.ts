// Wires the admin service: operator tokens, the authentication interceptor,
// clients of the owners (queue, policy), and the gRPC server. Admin owns no
// data; it is ready as soon as it listens.
import { GrpcServer, type TlsFiles } from '@tern/grpc';
import { AdminServiceService } from '@tern/proto';
import { Components, HttpServerPart, part, type AppDeps } from '@tern/runtime';
import { authInterceptor } from './auth';
import type { Config } from './config';
import { connectOwner } from './owners';
import { createAdminService } from './service';
import { TokenStore } from './tokens';

export type { AppDeps };

export interface App {
  start(): Promise<void>;
  stop(): Promise<void>;
  /** Bound gRPC port (useful with port 0). */
  readonly grpcPort: number;
  readonly tokens: TokenStore;
}

export function createApp(config: Config, deps: AppDeps): App {
  const { logger, tracer, meter } = deps.telemetry;
  const tokens = new TokenStore({
    file: config.TERN_ADMIN_TOKENS_FILE,
    inline: config.TERN_ADMIN_TOKENS,
    reloadMs: config.TERN_ADMIN_TOKENS_RELOAD_MS,
    logger,
  });
  const authResults = meter.createCounter('tern_admin_auth_total', { description: 'Admin API authentication results' });
  const tls: TlsFiles | undefined = config.TERN_GRPC_TLS_CERT_FILE
    ? { certFile: config.TERN_GRPC_TLS_CERT_FILE, keyFile: config.TERN_GRPC_TLS_KEY_FILE, caFile: config.TERN_GRPC_TLS_CA_FILE }
    : undefined;
  const grpcServer = new GrpcServer({
    logger,
    tracer,
    tls,
    interceptors: [
      authInterceptor({
        lookup: (token) => tokens.lookup(token),
        certAuth: config.TERN_ADMIN_CERT_AUTH,
        certRole: config.TERN_ADMIN_CERT_ROLE,
        logger,
        onResult: (result) => authResults.add(1, { result }),
      }),
    ],
  });
  const owners = {
    queue: connectOwner('queue', config.TERN_QUEUE_ADDR, config.TERN_ADMIN_FORWARD_DEADLINE_MS),
    policy: connectOwner('policy', config.TERN_POLICY_ADDR, config.TERN_ADMIN_FORWARD_DEADLINE_MS),
    ...(config.TERN_WEBHOOKS_ADDR ? { webhooks: connectOwner('webhooks', config.TERN_WEBHOOKS_ADDR, config.TERN_ADMIN_FORWARD_DEADLINE_MS) } : {}),
  };
  grpcServer.add(
    'tern.v1.AdminService',
    AdminServiceService,
    createAdminService({
      owners,
      deadlineMs: config.TERN_ADMIN_FORWARD_DEADLINE_MS,
      streamDeadlineMs: config.TERN_ADMIN_STREAM_DEADLINE_MS,
      logger,
      meter,
    }),
  );
  // Started in this order, stopped in reverse: not ready first, then the
  // listener (calls in flight finish), the owners' clients, the token reload.
  const parts = new Components(logger);
  parts.add('tokens', part('tokens', { start: () => tokens.start(), drain: () => tokens.stop() }));
  parts.add('owners', part('owner clients', { drain: () => Object.values(owners).forEach((o) => o.client.close()) }));
  if (!deps.noMetricsServer) {
    parts.add('metrics', new HttpServerPart('metrics', () => deps.telemetry.serveMetrics(config.TERN_METRICS_LISTEN.host, config.TERN_METRICS_LISTEN.port, () => grpcServer.ready())));
  }
  parts.add('grpc', grpcServer.listener(config.TERN_GRPC_LISTEN.host, config.TERN_GRPC_LISTEN.port, config.TERN_SHUTDOWN_GRACE_MS));
  parts.add('readiness', grpcServer.readiness());

  return {
    tokens,
    get grpcPort() {
      return grpcServer.port;
    },
    async start() {
      await parts.start();
      logger.info(
        { grpc: grpcServer.port, queue: config.TERN_QUEUE_ADDR, policy: config.TERN_POLICY_ADDR, webhooks: config.TERN_WEBHOOKS_ADDR, tls: Boolean(tls), mtls: Boolean(tls?.caFile), operators: tokens.names() },
        'admin serving',
      );
    },
    stop: () => parts.stop(),
  };
}
