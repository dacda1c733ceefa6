// Process settings of the policy service, read once from the environment.
// Keys are the variable names, so a bad value is reported by its name.
import { CheckStage } from '@tern/proto';
import { bool, commonSchema, ConfigError, csv, grpcTarget, hostPort, keyEncryptionKey, nonNegativeInt, parseEnv, positiveInt, postgresUrl, z } from '@tern/config';
import { normalizeDomain } from './address';
import { parseZones } from './dnsbl';
import { parseNetworks } from './networks';
import { parseRate } from './ratelimit';
import { errorMessage } from '@tern/runtime';

const cidrList = (fallback: string) =>
  z
    .string()
    .default(fallback)
    .transform((value, ctx) => {
      try {
        return parseNetworks(value.split(',').map((s) => s.trim()).filter(Boolean));
      } catch (err) {
        ctx.addIssue({ code: 'custom', message: errorMessage(err) });
        return z.NEVER;
      }
    });

/** "N/window" (e.g. 100/1m); unset or "off" = no limit. */
const rate = () =>
  z
    .string()
    .optional()
    .transform((value, ctx) => {
      try {
        return value === undefined ? undefined : parseRate(value);
      } catch (err) {
        ctx.addIssue({ code: 'custom', message: errorMessage(err) });
        return z.NEVER;
      }
    });

/** "N/window" (or "off") with a default when unset. */
const rateOr = (fallback: string) =>
  z
    .string()
    .default(fallback)
    .transform((value, ctx) => {
      try {
        return parseRate(value);
      } catch (err) {
        ctx.addIssue({ code: 'custom', message: errorMessage(err) });
        return z.NEVER;
      }
    });

/** Clients the suppression list can be enforced for (TERN_SUPPRESSION_ENFORCE). */
export const SUPPRESSION_SCOPES = ['authenticated', 'trusted', 'all'] as const;
export type SuppressionScope = (typeof SUPPRESSION_SCOPES)[number];

const STAGES: Record<string, CheckStage> = {
  connect: CheckStage.CHECK_STAGE_CONNECT,
  helo: CheckStage.CHECK_STAGE_HELO,
  mail: CheckStage.CHECK_STAGE_MAIL,
  rcpt: CheckStage.CHECK_STAGE_RCPT,
};

const schema = z.object({
  ...commonSchema({ grpcPort: 7002, metricsPort: 9102 }),
  TERN_DATABASE_URL: postgresUrl(),
  TERN_DATABASE_POOL_MAX: positiveInt(10),
  /** Clients in these networks may relay (Postfix mynetworks). */
  TERN_TRUSTED_NETWORKS: cidrList('127.0.0.1/32'),
  /** Full reload of the policy data as a safety net next to LISTEN/NOTIFY. */
  TERN_POLICY_RELOAD_MS: positiveInt(30_000),
  /**
   * How long ingress may reuse an accept that depends only on the request and
   * policy data (no rate counter, DNSBL, SPF, greylisting or policy server
   * involved): CheckResponse.cache_ms. 0 = ask for every stage.
   */
  TERN_POLICY_DECISION_CACHE_MS: nonNegativeInt(1_000),
  /** Sub-addressing: user+tag@domain is checked as user@domain too ("" = off). */
  TERN_RECIPIENT_DELIMITER: z.string().max(1).default('+'),
  /** Virtual aliases: nested aliases followed before a recipient is refused (451 4.3.5). */
  TERN_ALIAS_MAX_DEPTH: positiveInt(10),
  /** Virtual aliases: addresses one recipient may expand to before it is refused (452 4.5.3). */
  TERN_ALIAS_MAX_TARGETS: positiveInt(1000),
  /**
   * Sender Rewriting Scheme: the domain of the SRS addresses written for mail
   * forwarded to remote alias targets (its MX must be this Tern, so that
   * bounces come back); unset = SRS off.
   */
  TERN_SRS_DOMAIN: z
    .string()
    .default('')
    .transform((value, ctx) => {
      if (!value) return '';
      const d = normalizeDomain(value);
      if (!d) ctx.addIssue({ code: 'custom', message: `"${value}" is not a domain name` });
      return d ?? '';
    }),
  /** SRS secrets, comma-separated (from a Secret): the first signs, every one verifies (rotation). Required with TERN_SRS_DOMAIN. */
  TERN_SRS_SECRETS: csv(),
  /** Days an SRS0 address is honoured by the reverse rewrite. */
  TERN_SRS_MAX_AGE_DAYS: positiveInt(21),
  /** Largest message accepted, when a domain sets no smaller limit. */
  TERN_MAX_MESSAGE_SIZE: positiveInt(50 * 1024 * 1024),
  /** DNS servers for SPF/DKIM/DMARC/DNSBL lookups ("ip" or "ip:port"); empty = system resolver. */
  TERN_DNS_SERVERS: csv(),
  TERN_DNS_TIMEOUT_MS: positiveInt(3_000),

  /** DNS blocklists checked at CONNECT: "zone" or "zone=127.0.0.2;127.0.0.3". */
  TERN_DNSBL_ZONES: csv().transform((zones, ctx) => {
    try {
      return parseZones(zones);
    } catch (err) {
      ctx.addIssue({ code: 'custom', message: errorMessage(err) });
      return z.NEVER;
    }
  }),

  /**
   * Key-encryption key of the DKIM private keys stored through the admin API
   * (base64 of 32 bytes, from a Secret; delivery has the same). Without it
   * keys cannot be added; with keys stored, a missing or other key stops the start.
   */
  TERN_DKIM_KEK: keyEncryptionKey().optional(),

  /**
   * Delivery's gRPC address: relay domains whose recipient check is
   * `callout` ask it to verify an address with the next hop
   * (DeliveryService.VerifyRecipient). Unset: such RCPTs get 450 4.1.1.
   */
  TERN_DELIVERY_ADDR: grpcTarget().optional(),
  /** How long a next hop's 2xx to a verified address is kept (Postfix address_verify_positive_expire_time: 31d). */
  TERN_VERIFY_POSITIVE_TTL_S: positiveInt(7 * 86400),
  /** How long a next hop's 5xx is kept (Postfix address_verify_negative_expire_time: 3d; shorter, so a new mailbox works soon). */
  TERN_VERIFY_NEGATIVE_TTL_S: positiveInt(3 * 3600),
  /** Deadline of one verification (the RCPT waits that long at most, then 450 4.1.1). */
  TERN_VERIFY_TIMEOUT_MS: positiveInt(8_000),
  /** Verifications in progress at once on this pod, and for one domain on this pod; more get 450 4.1.1. */
  TERN_VERIFY_MAX_INFLIGHT: positiveInt(50),
  TERN_VERIFY_MAX_INFLIGHT_PER_DOMAIN: positiveInt(5),
  /** Verifications per domain across every policy pod (N/window or off); more get 450 4.1.1 with no callout. */
  TERN_VERIFY_RATE_PER_DOMAIN: rateOr('120/1m'),

  TERN_LIMIT_CONNECTIONS_PER_IP: rate(),
  TERN_LIMIT_MESSAGES_PER_IP: rate(),
  TERN_LIMIT_MESSAGES_PER_USER: rate(),
  TERN_LIMIT_RECIPIENTS_PER_USER: rate(),
  TERN_LIMIT_MESSAGES_PER_SENDER_DOMAIN: rate(),
  TERN_LIMIT_RECIPIENTS_PER_SENDER_DOMAIN: rate(),
  TERN_LIMIT_AUTH_FAILURES_PER_IP: rateOr('10/5m'),

  TERN_GREYLIST: bool(false),
  TERN_GREYLIST_DELAY_S: positiveInt(300),
  TERN_GREYLIST_RETRY_WINDOW_S: positiveInt(2 * 86400),
  TERN_GREYLIST_KEEP_S: positiveInt(35 * 86400),
  TERN_GREYLIST_AUTO_WHITELIST: nonNegativeInt(5),

  /** A hard SPF fail at MAIL: "reject" (550 5.7.23) or "none" (only reported in Authentication-Results). */
  TERN_SPF_FAIL_ACTION: z.enum(['reject', 'none']).default('reject'),
  /**
   * Whose RCPTs the suppression list refuses (550 5.1.1): a comma list of
   * authenticated (SMTP AUTH users), trusted (clients in
   * TERN_TRUSTED_NETWORKS), all (every client, the MX listener too); none.
   * Default: every sender that may relay, i.e. mail going out. true and false
   * (the earlier form) mean the default and none.
   */
  TERN_SUPPRESSION_ENFORCE: z
    .string()
    .default('authenticated,trusted')
    .transform((value, ctx) => {
      const v = value.trim().toLowerCase();
      if (['true', '1', 'yes', 'on'].includes(v)) return new Set<SuppressionScope>(['authenticated', 'trusted']);
      if (['false', '0', 'no', 'off', 'none', ''].includes(v)) return new Set<SuppressionScope>();
      const out = new Set<SuppressionScope>();
      for (const name of v.split(',').map((x) => x.trim()).filter(Boolean)) {
        if (!(SUPPRESSION_SCOPES as readonly string[]).includes(name)) {
          ctx.addIssue({ code: 'custom', message: `"${name}" is not one of ${SUPPRESSION_SCOPES.join(', ')}, none` });
          return z.NEVER;
        }
        out.add(name as SuppressionScope);
      }
      return out;
    }),
  /** How long a suppression lasts from its last listing (30 days); then it is neither enforced nor listed, and removed. */
  TERN_SUPPRESSION_KEEP_S: positiveInt(30 * 86400),
  /** How often expired suppressions are removed. */
  TERN_SUPPRESSION_SWEEP_MS: positiveInt(60_000),
  /** Refuse messages failing DMARC whose domain publishes p=reject. */
  TERN_DMARC_ENFORCE: bool(true),
  /** ARC sealers (domains) whose valid chain overrides a DMARC reject. */
  TERN_ARC_TRUSTED_SEALERS: csv().transform((v) => v.map((s) => s.toLowerCase())),

  /** Postfix policy delegation servers, asked in order: host:port list. */
  TERN_POLICY_SERVERS: csv().transform((list, ctx) =>
    list.map((entry) => {
      const r = hostPort().safeParse(entry.replace(/^inet:/, ''));
      if (!r.success) {
        ctx.addIssue({ code: 'custom', message: `"${entry}" is not host:port` });
        return { host: '', port: 0 };
      }
      return r.data;
    }),
  ),
  TERN_POLICY_SERVER_TIMEOUT_MS: positiveInt(2_000),
  TERN_POLICY_SERVER_STAGES: csv(['rcpt']).transform((list, ctx) =>
    list.map((name) => {
      const stage = STAGES[name.toLowerCase()];
      if (stage === undefined) ctx.addIssue({ code: 'custom', message: `"${name}" is not one of connect, helo, mail, rcpt` });
      return stage ?? CheckStage.CHECK_STAGE_RCPT;
    }),
  ),
  /** What an unreachable or confused policy server amounts to (Postfix default_action). */
  TERN_POLICY_SERVER_DEFAULT_ACTION: z.string().default('451 4.3.5 Server configuration problem'),
});

export type Config = z.infer<typeof schema>;

export function loadConfig(env: Record<string, string | undefined> = process.env): Config {
  const config = parseEnv(schema, env);
  if (config.TERN_SRS_DOMAIN && config.TERN_SRS_SECRETS.length === 0) {
    throw new ConfigError('invalid configuration:\n  TERN_SRS_SECRETS: required with TERN_SRS_DOMAIN (one secret or more, comma-separated; the first signs)', [
      { variable: 'TERN_SRS_SECRETS', message: 'required with TERN_SRS_DOMAIN (one secret or more, comma-separated; the first signs)' },
    ]);
  }
  if (config.TERN_SRS_SECRETS.some((s) => s.length < 16)) {
    throw new ConfigError('invalid configuration:\n  TERN_SRS_SECRETS: each secret needs at least 16 characters', [
      { variable: 'TERN_SRS_SECRETS', message: 'each secret needs at least 16 characters' },
    ]);
  }
  return config;
}
