// Process settings of the bounce service, read once from the environment.
// Keys are the variable names, so a bad value is reported by its name.
import { bool, commonSchema, ConfigError, csv, grpcTarget, hostPort, natsUrl, parseEnv, positiveInt, z, type HostPort } from '@tern/config';
import { EVENT_FORMATS } from '@tern/bus';
import { DSN_ACTIONS, type DsnAction } from '@tern/dsn';

const address = () => z.string().regex(/^[^\s<>@]+@[^\s<>@]+$/, 'expected an address like postmaster@example.com');
const hostname = () => z.string().regex(/^[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$/, 'expected a host name like mx.example.com');

// hostPort(fallback) of @tern/config hands out the fallback untransformed
// (zod 4's default() short-circuits the transform), so the defaults are put
// in front of the parser here.
const listen = (fallback: string) => z.string().default(fallback).pipe(hostPort() as z.ZodPipe<z.ZodString, z.ZodTransform<HostPort, string>>);

const schema = z.object({
  ...commonSchema({ grpcPort: 7005, metricsPort: 9105 }),
  TERN_GRPC_LISTEN: listen('0.0.0.0:7005'),
  TERN_METRICS_LISTEN: listen('0.0.0.0:9105'),
  TERN_NATS_URL: natsUrl(),
  TERN_QUEUE_ADDR: grpcTarget(),
  /** Policy service, for the suppression list; unset = no feed. */
  TERN_POLICY_ADDR: grpcTarget().optional(),
  /** Add permanently failed recipients (5.x.x) to policy's suppression list. */
  TERN_BOUNCE_SUPPRESS_HARD_FAILURES: bool(true),
  /** Publish a `suppressed` lifecycle event (TERN_EVENTS) for each address the feed lists. */
  TERN_BOUNCE_EVENTS: bool(true),
  /** Lifecycle event payloads, as the queue writes them: protobuf or json. */
  TERN_EVENTS_FORMAT: z.enum(EVENT_FORMATS).default('protobuf'),
  /** Reporting-MTA, From domain and Message-ID domain of reports; default TERN_HOSTNAME. */
  TERN_REPORTING_MTA: hostname().optional(),
  /** From address of reports; default MAILER-DAEMON@<reporting MTA>. */
  TERN_REPORT_FROM: address().optional(),
  /** Address the report text names for help; default postmaster@<reporting MTA>. */
  TERN_POSTMASTER: address().optional(),
  /** When set, this address gets a copy of reports (an extra envelope recipient, like Bcc). */
  TERN_POSTMASTER_COPY: address().optional(),
  /** Which report actions the postmaster copy covers. */
  TERN_POSTMASTER_COPY_ACTIONS: csv(['failed']).superRefine((list, ctx) => {
    for (const a of list) {
      if (!(DSN_ACTIONS as readonly string[]).includes(a)) ctx.addIssue({ code: 'custom', message: `unknown action "${a}" (expected ${DSN_ACTIONS.join(', ')})` });
    }
  }),
  /** Without RET, a message larger than this (octets) is returned as headers only. */
  TERN_REPORT_FULL_RETURN_LIMIT: positiveInt(50_000),
  /** Reports built at once by this pod. */
  TERN_BOUNCE_CONCURRENCY: positiveInt(8),
  /** Deadline of each ReadBody and Enqueue stream. */
  TERN_QUEUE_DEADLINE_MS: positiveInt(120_000),
  /** First redelivery delay after a failure; doubles per attempt up to the max. */
  TERN_BOUNCE_RETRY_MIN_MS: positiveInt(5_000),
  TERN_BOUNCE_RETRY_MAX_MS: positiveInt(300_000),
  /** Attempts for a request the queue refuses as invalid; transient errors are retried without limit. */
  TERN_BOUNCE_MAX_ATTEMPTS: positiveInt(10),
});

export type Config = z.infer<typeof schema> & { reportingMta: string; postmasterCopyActions: Set<DsnAction> };

export function loadConfig(env: Record<string, string | undefined> = process.env): Config {
  const config = parseEnv(schema, env);
  if (config.TERN_BOUNCE_RETRY_MIN_MS > config.TERN_BOUNCE_RETRY_MAX_MS) {
    throw new ConfigError('invalid configuration:\n  TERN_BOUNCE_RETRY_MIN_MS: must not exceed TERN_BOUNCE_RETRY_MAX_MS', [
      { variable: 'TERN_BOUNCE_RETRY_MIN_MS', message: 'must not exceed TERN_BOUNCE_RETRY_MAX_MS' },
    ]);
  }
  return {
    ...config,
    reportingMta: config.TERN_REPORTING_MTA ?? config.TERN_HOSTNAME,
    postmasterCopyActions: new Set(config.TERN_POSTMASTER_COPY_ACTIONS as DsnAction[]),
  };
}
