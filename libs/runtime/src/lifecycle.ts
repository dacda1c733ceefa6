// Process lifecycle shared by every service's main.ts: start, then on
// SIGTERM/SIGINT run the app's stop() once, bounded by a grace timer
// (running -> stopping -> stopped), and exit.
import type { Logger } from '@tern/telemetry';
import { errorMessage } from './errors';

/**
 * How long after the grace period a stopping service may still take to close
 * what was left (ingress: 421 to the SMTP sessions still open, then up to 2 s
 * for them to close; gRPC, telemetry flush) before the process exits anyway.
 * The chart requires terminationGracePeriodSeconds >= preStop + grace + 10 s
 * (this and a margin).
 */
const SHUTDOWN_TAIL_MS = 5_000;

export interface RunningApp {
  /** Stop taking work, finish or hand back in-flight work, close dependencies. */
  stop(): Promise<void>;
}

export interface RunOptions {
  service: string;
  logger: Logger;
  graceMs: number;
  start(): Promise<RunningApp>;
  /** Flushes telemetry last. */
  flush?(): Promise<void>;
}

export function runService(opts: RunOptions): void {
  const { logger } = opts;
  let state: 'starting' | 'running' | 'stopping' = 'starting';
  let app: RunningApp | undefined;

  const shutdown = async (reason: string, code: number) => {
    if (state === 'stopping') return;
    state = 'stopping';
    logger.info({ reason, graceMs: opts.graceMs }, `${opts.service} stopping`);
    // The grace timer bounds the whole sequence; a stuck dependency must not
    // keep a pod in Terminating forever. The app may use all of graceMs for
    // work in flight (ingress: transactions in progress), so the tail comes on top.
    const timer = setTimeout(() => {
      logger.error({ graceMs: opts.graceMs }, `${opts.service} did not stop within the grace period; exiting`);
      process.exit(code || 1);
    }, opts.graceMs + SHUTDOWN_TAIL_MS);
    timer.unref();
    try {
      await app?.stop();
      await opts.flush?.();
      logger.info(`${opts.service} stopped`);
    } catch (err) {
      logger.error({ err: errorMessage(err) }, 'error during shutdown');
      code = code || 1;
    }
    process.exit(code);
  };

  process.once('SIGTERM', () => void shutdown('SIGTERM', 0));
  process.once('SIGINT', () => void shutdown('SIGINT', 0));
  process.on('unhandledRejection', (err) => {
    logger.fatal({ err: (err as Error)?.stack ?? String(err) }, 'unhandled promise rejection');
    void shutdown('unhandledRejection', 1);
  });
  process.on('uncaughtException', (err) => {
    logger.fatal({ err: err.stack ?? err.message }, 'uncaught exception');
    void shutdown('uncaughtException', 1);
  });

  opts
    .start()
    .then((started) => {
      app = started;
      if (state === 'starting') state = 'running';
      logger.info(`${opts.service} started`);
    })
    .catch((err: Error) => {
      logger.fatal({ err: err.stack ?? err.message }, `${opts.service} failed to start: ${err.message}`);
      void shutdown('startup failure', 1);
    });
}
