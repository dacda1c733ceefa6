// Entry point: the only place that reads process.env and installs signal handlers.
import { loadOrExit } from '@tern/config';
import { runService } from '@tern/runtime';
import { createTelemetry } from '@tern/telemetry';
import { createApp } from './app';
import { loadConfig } from './config';

const config = loadOrExit('delivery', () => loadConfig(process.env));
const telemetry = createTelemetry({
  service: 'delivery',
  logLevel: config.TERN_LOG_LEVEL,
  otlpEndpoint: config.OTEL_EXPORTER_OTLP_ENDPOINT,
  serviceNameOverride: process.env.OTEL_SERVICE_NAME,
});

runService({
  service: 'delivery',
  logger: telemetry.logger,
  graceMs: config.TERN_SHUTDOWN_GRACE_MS,
  async start() {
    const app = createApp(config, { telemetry });
    await app.start();
    return app;
  },
  flush: () => telemetry.shutdown(),
});
