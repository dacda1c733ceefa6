// Ingress's settings compiled once (as the queue's options.ts): the
// environment, read and checked by config.ts, becomes one defaulted object
// with a section per part (clients, the enqueue batcher, the queue status
// gate, TLS, the SMTP limits and listeners, milters, the hooks), and app.ts
// hands each part its own.
import type { SmtpLimits } from '@tern/smtp';
import type { Config } from './config';

/** Messages per EnqueueBatch call at most. */
const ENQUEUE_BATCH_MESSAGES = 64;

export function compileOptions(config: Config) {
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
  return {
    listen: { grpc: config.TERN_GRPC_LISTEN, metrics: config.TERN_METRICS_LISTEN, graceMs: config.TERN_SHUTDOWN_GRACE_MS },
    policy: { addr: config.TERN_POLICY_ADDR, deadlineMs: config.TERN_POLICY_DEADLINE_MS },
    queue: { addr: config.TERN_QUEUE_ADDR, statusDeadlineMs: config.TERN_QUEUE_STATUS_DEADLINE_MS, statusCacheMs: config.TERN_QUEUE_STATUS_CACHE_MS },
    /** Small messages' commits in EnqueueBatch calls; undefined = one Enqueue stream each. */
    enqueueBatch: config.TERN_ENQUEUE_BATCH_BODY_MAX
      ? { bodyMax: config.TERN_ENQUEUE_BATCH_BODY_MAX, maxCalls: config.TERN_ENQUEUE_BATCH_CALLS, maxMessages: ENQUEUE_BATCH_MESSAGES, deadlineMs: config.TERN_ENQUEUE_COMMIT_TIMEOUT_MS }
      : undefined,
    /** Certificate and key, reloaded every reloadMs; undefined = no TLS (MX without STARTTLS, no submission listeners). */
    tls: config.TERN_TLS_CERT_FILE && config.TERN_TLS_KEY_FILE ? { certFile: config.TERN_TLS_CERT_FILE, keyFile: config.TERN_TLS_KEY_FILE, reloadMs: config.TERN_TLS_RELOAD_MS } : undefined,
    milters: { refreshMs: config.TERN_MILTER_REFRESH_MS, spoolDir: config.TERN_MILTER_SPOOL_DIR, spoolMemory: config.TERN_MILTER_SPOOL_MEMORY, maxBody: config.TERN_MAX_MESSAGE_SIZE },
    /** What every listener shares (besides the hooks). */
    smtp: { hostname: config.TERN_HOSTNAME, proxyProtocolFrom: config.TERN_PROXY_PROTOCOL_CIDRS, limits },
    /** Sessions at once, in all and per client address, across the listeners. */
    sessions: { max: config.TERN_MAX_SESSIONS, perClient: config.TERN_MAX_SESSIONS_PER_CLIENT },
    listeners: { mx: config.TERN_SMTP_LISTEN, submission: config.TERN_SUBMISSION_LISTEN, submissions: config.TERN_SUBMISSIONS_LISTEN },
    /** The hooks' settings (HooksDeps without its collaborators). */
    hooks: {
      hostname: config.TERN_HOSTNAME,
      policyDeadlineMs: config.TERN_POLICY_DEADLINE_MS,
      commitTimeoutMs: config.TERN_ENQUEUE_COMMIT_TIMEOUT_MS,
      reverseDns: config.TERN_REVERSE_DNS ? { timeoutMs: config.TERN_REVERSE_DNS_TIMEOUT_MS } : undefined,
      messageChecks: config.TERN_MESSAGE_CHECKS.size ? { listeners: config.TERN_MESSAGE_CHECKS, timeoutMs: config.TERN_MESSAGE_CHECK_TIMEOUT_MS } : undefined,
      commands: { vrfy: config.TERN_VRFY, expn: config.TERN_EXPN, etrn: config.TERN_ETRN },
      maxRecipients: config.TERN_MAX_RECIPIENTS,
    },
  };
}

export type IngressOptions = ReturnType<typeof compileOptions>;
