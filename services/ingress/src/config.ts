// Process settings of the ingress service, read once from the environment.
// Keys are the variable names, so a bad value is reported by its name.
import fs from 'node:fs';
import os from 'node:os';
import tls from 'node:tls';
import { bool, commonSchema, ConfigError, csv, grpcTarget, hostPort, nonNegativeInt, parseEnv, positiveInt, z } from '@tern/config';
import { CidrSet } from '@tern/smtp';
import { errorMessage } from '@tern/runtime';

/** A listener address, or "off" to not start it. */
const listener = (fallback: string) =>
  z
    .string()
    .default(fallback)
    .transform((value, ctx) => {
      if (value.trim().toLowerCase() === 'off') return null;
      const parsed = hostPort().safeParse(value);
      if (!parsed.success) {
        ctx.addIssue({ code: 'custom', message: 'expected host:port (e.g. 0.0.0.0:2525) or "off"' });
        return z.NEVER;
      }
      return parsed.data;
    });

const schema = z.object({
  ...commonSchema({ grpcPort: 7001, metricsPort: 9101 }),
  /** MX listener (plain SMTP with STARTTLS when TLS is configured). */
  TERN_SMTP_LISTEN: listener('0.0.0.0:2525'),
  /** Submission with STARTTLS, AUTH required; starts only with TLS configured. */
  TERN_SUBMISSION_LISTEN: listener('0.0.0.0:2587'),
  /** Submission over implicit TLS, AUTH required; starts only with TLS configured. */
  TERN_SUBMISSIONS_LISTEN: listener('0.0.0.0:2465'),
  TERN_TLS_CERT_FILE: z.string().optional(),
  TERN_TLS_KEY_FILE: z.string().optional(),
  /** How often the certificate files are checked for changes. */
  TERN_TLS_RELOAD_MS: positiveInt(10_000),
  /** Load balancers allowed (and then required) to send a PROXY v1/v2 header. */
  TERN_PROXY_PROTOCOL_CIDRS: csv([]).superRefine((list, ctx) => {
    try {
      new CidrSet(list);
    } catch (err) {
      ctx.addIssue({ code: 'custom', message: `not a CIDR list: ${errorMessage(err)}` });
    }
  }),
  TERN_POLICY_ADDR: grpcTarget(),
  TERN_QUEUE_ADDR: grpcTarget(),
  /** Deadline of each policy call; a timeout answers 451 4.3.0. */
  TERN_POLICY_DEADLINE_MS: positiveInt(5_000),
  /** How long a QueueService.Status answer is reused. */
  TERN_QUEUE_STATUS_CACHE_MS: positiveInt(1_000),
  /** Deadline of a Status call. */
  TERN_QUEUE_STATUS_DEADLINE_MS: positiveInt(2_000),
  /**
   * Listeners whose messages go through policy's end-of-data checks
   * (CheckMessage: DKIM, SPF, DMARC, ARC, size per domain): "on" (= mx, the
   * default), "off", or a list of mx, submission, submissions.
   */
  TERN_MESSAGE_CHECKS: z
    .string()
    .default('on')
    .transform((value, ctx) => {
      const v = value.trim().toLowerCase();
      if (v === 'on') return new Set(['mx']);
      if (v === 'off' || v === '') return new Set<string>();
      const list = v.split(',').map((x) => x.trim()).filter(Boolean);
      const bad = list.find((x) => !['mx', 'submission', 'submissions'].includes(x));
      if (bad !== undefined) {
        ctx.addIssue({ code: 'custom', message: `expected on, off or a list of mx, submission, submissions; got "${bad}"` });
        return z.NEVER;
      }
      return new Set(list);
    }),
  /** After the end of data, how long to wait for the CheckMessage verdict (then 451 4.3.0). */
  TERN_MESSAGE_CHECK_TIMEOUT_MS: positiveInt(30_000),
  /** How often the milter chain is read from policy (PolicyService.ListMilters): a change applies within this. */
  TERN_MILTER_REFRESH_MS: positiveInt(5_000),
  /** A message waiting for the milters stays in memory up to this many octets, past that in a file in TERN_MILTER_SPOOL_DIR. */
  TERN_MILTER_SPOOL_MEMORY: nonNegativeInt(128 * 1024),
  /** Directory of those files (each unlinked as soon as it is opened). */
  TERN_MILTER_SPOOL_DIR: z.string().default(os.tmpdir()),
  /** VRFY answered from policy's data (250 / 550 5.1.1); off: 252 2.5.0. */
  TERN_VRFY: bool(false),
  /** EXPN for authenticated users on the submission listeners; off: 502 5.5.1. */
  TERN_EXPN: bool(false),
  /** ETRN (RFC 1985) for relay domains: retry their deferred mail now; off: 502 5.5.1. */
  TERN_ETRN: bool(false),
  /** After the end of data, how long to wait for the queue's commit. */
  TERN_ENQUEUE_COMMIT_TIMEOUT_MS: positiveInt(60_000),
  /**
   * Messages up to this many bytes (as stored: with the Received line) are
   * held whole and sent to the queue in EnqueueBatch calls, several per
   * call under load; bigger ones are streamed (Enqueue). At most the
   * queue's TERN_QUEUE_MEMORY_BODY_MAX (256 KiB by default). 0 = stream all.
   */
  TERN_ENQUEUE_BATCH_BODY_MAX: nonNegativeInt(128 * 1024),
  /** Batches of whole messages in flight to the queue at most (on its EnqueueStream); messages ready meanwhile wait for the next batch. */
  TERN_ENQUEUE_BATCH_CALLS: positiveInt(1),
  /** Largest message (octets), advertised with SIZE. */
  TERN_MAX_MESSAGE_SIZE: positiveInt(52_428_800),
  TERN_MAX_RECIPIENTS: positiveInt(100),
  /** 4xx/5xx replies per session before 421 and disconnect. */
  TERN_MAX_ERRORS: positiveInt(20),
  TERN_UNAVAILABLE_CLOSE_MS: positiveInt(60_000),
  /** Concurrent SMTP sessions per pod (all listeners together). */
  TERN_MAX_SESSIONS: positiveInt(2_000),
  TERN_MAX_SESSIONS_PER_CLIENT: positiveInt(50),
  TERN_SMTP_COMMAND_TIMEOUT_MS: positiveInt(300_000),
  TERN_SMTP_DATA_TIMEOUT_MS: positiveInt(300_000),
  /** Wait before the greeting; clients talking earlier are refused (0 = no wait). */
  TERN_GREETING_DELAY_MS: nonNegativeInt(0),
  /** Look up the client's PTR name (forward-confirmed) for Received and policy. */
  TERN_REVERSE_DNS: bool(false),
  TERN_REVERSE_DNS_TIMEOUT_MS: positiveInt(1_500),
});

export type Config = z.infer<typeof schema>;

export function loadConfig(env: Record<string, string | undefined> = process.env): Config {
  const config = parseEnv(schema, env);
  const problems: Array<{ variable: string; message: string }> = [];
  const cert = config.TERN_TLS_CERT_FILE;
  const key = config.TERN_TLS_KEY_FILE;
  if (Boolean(cert) !== Boolean(key)) {
    problems.push({ variable: cert ? 'TERN_TLS_KEY_FILE' : 'TERN_TLS_CERT_FILE', message: 'TERN_TLS_CERT_FILE and TERN_TLS_KEY_FILE go together' });
  } else if (cert && key) {
    for (const [variable, file] of [['TERN_TLS_CERT_FILE', cert], ['TERN_TLS_KEY_FILE', key]] as const) {
      try {
        fs.accessSync(file, fs.constants.R_OK);
      } catch {
        problems.push({ variable, message: `cannot read ${file}` });
      }
    }
    if (problems.length === 0) {
      try {
        tls.createSecureContext({ cert: fs.readFileSync(cert), key: fs.readFileSync(key) });
      } catch (err) {
        problems.push({ variable: 'TERN_TLS_CERT_FILE', message: `certificate and key do not load: ${errorMessage(err)}` });
      }
    }
  }
  try {
    fs.accessSync(config.TERN_MILTER_SPOOL_DIR, fs.constants.W_OK);
  } catch {
    problems.push({ variable: 'TERN_MILTER_SPOOL_DIR', message: `cannot write to ${config.TERN_MILTER_SPOOL_DIR} (messages waiting for milters go there)` });
  }
  if (problems.length > 0) {
    const lines = problems.map((p) => `  ${p.variable}: ${p.message}`).join('\n');
    throw new ConfigError(`invalid configuration:\n${lines}`, problems);
  }
  return config;
}
