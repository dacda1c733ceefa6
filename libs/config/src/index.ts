// Process settings come from the environment, validated once at start.
// A schema is keyed by the variable names themselves, so every error names
// the variable the operator has to fix.
import os from 'node:os';
import { z } from 'zod';
import { redactUrl } from './redact';

export { z };
export { KekError, keyEncryptionKey, seal, unseal } from './kek';
export { redactUrl };

/** Variables whose value is a secret: an error about one never shows the value. */
const SECRET_VARIABLE = /_(KEK|SECRET|PASSWORD|TOKEN)$/;

export class ConfigError extends Error {
  constructor(
    message: string,
    readonly problems: ReadonlyArray<{ variable: string; message: string }>,
  ) {
    super(message);
    this.name = 'ConfigError';
  }
}

type Env = Record<string, string | undefined>;

/** Parses `env` with a schema whose keys are environment variable names. */
export function parseEnv<S extends z.ZodObject>(schema: S, env: Env = process.env): z.infer<S> {
  // Empty strings mean "unset": `FOO= cmd` must behave like no FOO at all.
  const cleaned: Env = {};
  for (const key of Object.keys(schema.shape)) {
    const value = env[key];
    if (value !== undefined && value !== '') cleaned[key] = value;
  }
  const result = schema.safeParse(cleaned);
  if (result.success) return result.data;
  const problems = result.error.issues.map((issue) => {
    const variable = String(issue.path[0] ?? '(environment)');
    const given = cleaned[variable];
    // A URL is shown without its password (TERN_DATABASE_URL, TERN_NATS_URL).
    const shown = given === undefined ? 'unset' : SECRET_VARIABLE.test(variable) ? 'a value, not shown' : `"${redactUrl(given)}"`;
    return { variable, message: `${issue.message} (got ${shown})` };
  });
  const lines = problems.map((p) => `  ${p.variable}: ${p.message}`).join('\n');
  throw new ConfigError(`invalid configuration:\n${lines}`, problems);
}

/**
 * What is wrong with a configuration: runs `load` and returns each problem
 * of its ConfigError as "VARIABLE: message" ([] when it loads). Other
 * errors are thrown. For checks and tests of a service's settings.
 */
export function configProblems(load: () => unknown): string[] {
  try {
    load();
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    return err.problems.map((p) => `${p.variable}: ${p.message}`);
  }
  return [];
}

/**
 * Runs `load` and, on a ConfigError, prints it and exits with status 78
 * (EX_CONFIG) — the process must not start half-configured.
 */
export function loadOrExit<T>(service: string, load: () => T): T {
  try {
    return load();
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`tern-${service}: ${err.message}\nFix the variables above and start again.\n`);
      process.exit(78);
    }
    throw err;
  }
}

export interface HostPort {
  host: string;
  port: number;
}

/** "host:port", "[v6]:port" or ":port" (all interfaces). */
export const hostPort = (fallback?: string) => {
  const parser = z.string().transform((value, ctx): HostPort => {
    const match = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(value.trim());
    const port = match ? Number(match[3]) : NaN;
    if (!match || port > 65535) {
      ctx.addIssue({ code: 'custom', message: 'expected host:port, e.g. 127.0.0.1:7003' });
      return z.NEVER;
    }
    return { host: match[1] ?? (match[2] || '0.0.0.0'), port };
  });
  // prefault, not default: zod 4's default() would skip the transform and
  // hand back the raw string.
  return fallback === undefined ? parser : parser.prefault(fallback);
};

/** A gRPC target as given ("host:port", "dns:///name:port", "unix:/path"). */
export const grpcTarget = () =>
  z.string().regex(/^(?:[a-z]+:.+|[^\s:]+:\d{1,5}|\[[^\]]+\]:\d{1,5})$/, 'expected host:port or a gRPC target URI');

export const positiveInt = (fallback: number) => z.coerce.number().int().positive().default(fallback);

export const nonNegativeInt = (fallback: number) => z.coerce.number().int().nonnegative().default(fallback);

/** Comma-separated list; blanks dropped. */
export const csv = (fallback: string[] = []) =>
  z
    .string()
    .transform((v) => v.split(',').map((s) => s.trim()).filter(Boolean))
    .default(fallback as never);

export const bool = (fallback: boolean) => z.stringbool().default(fallback);

export const logLevel = () => z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']).default('info');

export const postgresUrl = () =>
  z.string().regex(/^postgres(ql)?:\/\//, 'expected a postgres:// URL');

export const natsUrl = () => z.string().regex(/^(nats|tls|ws|wss):\/\//, 'expected a nats:// URL');

/** Variables every service reads, with the service's own default ports. */
export function commonSchema(defaults: { grpcPort: number; metricsPort: number }) {
  return {
    TERN_GRPC_LISTEN: hostPort(`0.0.0.0:${defaults.grpcPort}`),
    TERN_METRICS_LISTEN: hostPort(`0.0.0.0:${defaults.metricsPort}`),
    TERN_LOG_LEVEL: logLevel(),
    TERN_HOSTNAME: z.string().min(1).default(os.hostname()),
    TERN_SHUTDOWN_GRACE_MS: positiveInt(30_000),
    OTEL_EXPORTER_OTLP_ENDPOINT: z.url().optional(),
  };
}
