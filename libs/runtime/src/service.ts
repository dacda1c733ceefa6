// What every service's main.ts is: read the environment once (a bad value
// stops the process with a message naming it, exit 78), set up telemetry
// from it, then run the app under runService (signals, grace period, exit).
// The only place that reads process.env for a service.
import { loadOrExit } from '@tern/config';
import { createTelemetry, type Telemetry } from '@tern/telemetry';
import { runService } from './lifecycle';

/** The settings defineService itself reads (every service's config has them). */
export interface CommonConfig {
  TERN_LOG_LEVEL: string;
  TERN_SHUTDOWN_GRACE_MS: number;
  OTEL_EXPORTER_OTLP_ENDPOINT?: string;
}

/** What a service's createApp gets besides its config (every app.ts takes this). */
export interface AppDeps {
  telemetry: Pick<Telemetry, 'logger' | 'tracer' | 'meter' | 'serveMetrics'>;
  /** Tests: serve no /metrics endpoint. */
  noMetricsServer?: boolean;
}

export interface ServiceDefinition<C extends CommonConfig> {
  /** ingress, policy, queue, delivery, bounce or admin: the log's service and the trace's `tern-<name>`. */
  name: string;
  loadConfig(env: NodeJS.ProcessEnv): C;
  createApp(config: C, deps: { telemetry: Telemetry }): { start(): Promise<void>; stop(): Promise<void> };
}

export function defineService<C extends CommonConfig>(def: ServiceDefinition<C>): void {
  const config = loadOrExit(def.name, () => def.loadConfig(process.env));
  const telemetry = createTelemetry({
    service: def.name,
    logLevel: config.TERN_LOG_LEVEL,
    otlpEndpoint: config.OTEL_EXPORTER_OTLP_ENDPOINT,
    serviceNameOverride: process.env.OTEL_SERVICE_NAME,
  });
  runService({
    service: def.name,
    logger: telemetry.logger,
    graceMs: config.TERN_SHUTDOWN_GRACE_MS,
    async start() {
      const app = def.createApp(config, { telemetry });
      await app.start();
      return app;
    },
    flush: () => telemetry.shutdown(),
  });
}
