// Process settings of the delivery service, read once from the environment.
// Keys are the variable names, so a bad value is reported by its name.
import fs from 'node:fs';
import { bool, commonSchema, csv, grpcTarget, keyEncryptionKey, natsUrl, nonNegativeInt, parseEnv, positiveInt, z } from '@tern/config';
import { parseDkimKeys } from './dkim';
import { errorMessage } from '@tern/runtime';

/** A file the process can read now (a missing CA or key file stops the start, naming the variable). */
const readableFile = () =>
  z.string().min(1).refine((f) => {
    try {
      fs.accessSync(f, fs.constants.R_OK);
      return true;
    } catch {
      return false;
    }
  }, 'cannot read this file');

const schema = z.object({
  ...commonSchema({ grpcPort: 7004, metricsPort: 9104 }),
  TERN_NATS_URL: natsUrl(),
  TERN_QUEUE_ADDR: grpcTarget(),
  /** Resolvers for MX/A/AAAA ("ip" or "ip:port"); empty = the system's. */
  TERN_DNS_SERVERS: csv([]),
  /** Per-query DNS timeout (each of two tries). */
  TERN_DNS_TIMEOUT_MS: positiveInt(5_000),
  /** Port dialled on MX hosts (25 on the internet; tests use sinks on a high port). */
  TERN_SMTP_PORT: positiveInt(25),
  /** EHLO name; defaults to TERN_HOSTNAME. */
  TERN_HELO_NAME: z.string().min(1).optional(),
  /** Source address for outbound connections (multi-IP egress). */
  TERN_SOURCE_ADDRESS: z.union([z.ipv4(), z.ipv6()]).optional(),
  /** Jobs handled at once by this pod. */
  TERN_CONCURRENCY: positiveInt(64),
  /** RFC 5321 4.5.3.2 timeouts. */
  TERN_SMTP_CONNECT_TIMEOUT_MS: positiveInt(30_000),
  TERN_SMTP_COMMAND_TIMEOUT_MS: positiveInt(300_000),
  TERN_SMTP_DATA_END_TIMEOUT_MS: positiveInt(600_000),
  /** Connection reuse: messages per connection, and how long an idle one is kept. */
  TERN_SMTP_MAX_MESSAGES_PER_CONNECTION: positiveInt(100),
  TERN_SMTP_IDLE_MS: positiveInt(5_000),
  /**
   * Sessions open at once from this pod to one peer (address and port),
   * idle ones included; further jobs to it wait for one. 20 is Postfix's
   * default_destination_concurrency_limit; receivers commonly allow 50 per
   * client IP. The queue's TERN_QUEUE_DEST_CONCURRENCY_MAX bounds the jobs
   * handed to all pods for one destination.
   */
  TERN_SMTP_MAX_SESSIONS_PER_PEER: positiveInt(20),
  /**
   * Trust anchors (PEM file) for certificate verification under the
   * "verify" TLS policy, REQUIRETLS and MTA-STS; unset = Node's bundled CAs.
   */
  TERN_SMTP_TLS_CA_FILE: readableFile().optional(),
  /**
   * Directory of secrets, one file per name (a mounted Kubernetes Secret):
   * a smart host route's auth_secret names the file holding its password.
   */
  TERN_SMTP_AUTH_SECRETS_DIR: z.string().min(1).optional(),
  /** MTA-STS (RFC 8461): fetch, cache and enforce recipient domains' policies. */
  TERN_MTA_STS: bool(true),
  /** HTTPS port of MTA-STS policy hosts (443 on the internet; tests use another). */
  TERN_MTA_STS_PORT: positiveInt(443),
  /**
   * DANE (RFC 7672): honour TLSA records the resolver (TERN_DNS_SERVERS, the
   * first one) marks as DNSSEC-validated (AD). Needs a validating resolver on
   * a trusted path; with one that does not validate, DANE never applies.
   */
  TERN_DANE: bool(true),
  /**
   * DKIM signing keys from files, "domain:selector:/path/to/key.pem" comma
   * separated (messages whose From: domain, or a parent of it, has a key are
   * signed). A domain with a key in the admin API signs with that one instead.
   */
  TERN_DKIM_KEYS: csv([]).superRefine((entries, ctx) => {
    try {
      parseDkimKeys(entries, (file) => fs.readFileSync(file, 'utf8'));
    } catch (err) {
      ctx.addIssue({ code: 'custom', message: errorMessage(err) });
    }
  }),
  /**
   * Policy's address: the DKIM keys managed through the admin API come from
   * it (GetDkimSigningKeys). Unset: only TERN_DKIM_KEYS signs.
   */
  TERN_POLICY_ADDR: grpcTarget().optional(),
  /**
   * Key-encryption key of the admin API's DKIM keys (base64 of 32 bytes, from
   * a Secret; the same as policy's). Needed once the API has a key: without
   * it, or with another one, the process does not start.
   */
  TERN_DKIM_KEK: keyEncryptionKey().optional(),
  /** How often the admin API's DKIM keys are asked of policy (changes sign within this). */
  TERN_DKIM_REFRESH_MS: positiveInt(2_000),
  /** Deadline of a ReadBody stream from the queue. */
  TERN_QUEUE_DEADLINE_MS: positiveInt(120_000),
  /**
   * Results of jobs that finish within this many ms of each other go to
   * JetStream as one message (0: only those of one event-loop turn). Each
   * job is acknowledged after its result is stored, so this is also how much
   * longer a job stays unacknowledged.
   */
  TERN_RESULT_BATCH_DELAY_MS: nonNegativeInt(10),
  /** Results per message at most. */
  TERN_RESULT_BATCH_MAX: positiveInt(64),
  /**
   * Recipient verification (VerifyRecipient, asked by policy for relay
   * domains with callout checks): the MAIL FROM of the probe ("" = the null
   * sender, <>), each connect and reply's timeout, verifications at once on
   * this pod, and how often the queue's route table is read for them.
   */
  TERN_VERIFY_SENDER: z
    .string()
    .default('')
    .refine((s) => s === '' || /^[^\s<>@]+@[^\s<>@]+$/.test(s), 'an address (local@domain), or empty for the null sender'),
  TERN_VERIFY_TIMEOUT_MS: positiveInt(8_000),
  TERN_VERIFY_MAX_INFLIGHT: positiveInt(20),
  TERN_VERIFY_ROUTES_REFRESH_MS: positiveInt(5_000),
});

export type Config = z.infer<typeof schema>;

export function loadConfig(env: Record<string, string | undefined> = process.env): Config {
  return parseEnv(schema, env);
}
