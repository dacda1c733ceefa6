// Policy's settings compiled once (as the queue's options.ts): the
// environment, read and checked by config.ts, becomes one defaulted object
// with a section per part (the data and its cache, the engine, each check
// after the built-in rules, the stores' sweeps), and app.ts hands each part
// its own.
import type { Config } from './config';

/** How often expired verification results are removed. */
const VERIFY_SWEEP_MS = 60_000;

export function compileOptions(config: Config) {
  return {
    listen: { grpc: config.TERN_GRPC_LISTEN, metrics: config.TERN_METRICS_LISTEN, graceMs: config.TERN_SHUTDOWN_GRACE_MS },
    database: { url: config.TERN_DATABASE_URL, max: config.TERN_DATABASE_POOL_MAX, applicationName: 'tern-policy' },
    cache: { databaseUrl: config.TERN_DATABASE_URL, reloadMs: config.TERN_POLICY_RELOAD_MS },
    recipientDelimiter: config.TERN_RECIPIENT_DELIMITER,
    /** The engine's settings (EngineOptions without the rewrite rules and SRS). */
    engine: {
      trustedNetworks: config.TERN_TRUSTED_NETWORKS,
      recipientDelimiter: config.TERN_RECIPIENT_DELIMITER,
      maxMessageSize: config.TERN_MAX_MESSAGE_SIZE,
      aliasMaxDepth: config.TERN_ALIAS_MAX_DEPTH,
      aliasMaxTargets: config.TERN_ALIAS_MAX_TARGETS,
    },
    /** undefined = SRS off. */
    srs: config.TERN_SRS_DOMAIN ? { domain: config.TERN_SRS_DOMAIN, secrets: config.TERN_SRS_SECRETS, maxAgeDays: config.TERN_SRS_MAX_AGE_DAYS } : undefined,
    /** The TERN_LIMIT_* variables: the defaults under the admin API's rules (limits.ts). */
    rateLimits: {
      connectionsPerIp: config.TERN_LIMIT_CONNECTIONS_PER_IP,
      messagesPerIp: config.TERN_LIMIT_MESSAGES_PER_IP,
      messagesPerUser: config.TERN_LIMIT_MESSAGES_PER_USER,
      recipientsPerUser: config.TERN_LIMIT_RECIPIENTS_PER_USER,
      messagesPerSenderDomain: config.TERN_LIMIT_MESSAGES_PER_SENDER_DOMAIN,
      recipientsPerSenderDomain: config.TERN_LIMIT_RECIPIENTS_PER_SENDER_DOMAIN,
      authFailuresPerIp: config.TERN_LIMIT_AUTH_FAILURES_PER_IP,
    },
    dns: { servers: config.TERN_DNS_SERVERS, timeoutMs: config.TERN_DNS_TIMEOUT_MS },
    dnsblZones: config.TERN_DNSBL_ZONES,
    /** MessageAuth's settings (without its resolver, snapshot and logger). */
    messageAuth: {
      hostname: config.TERN_HOSTNAME,
      spfFailAction: config.TERN_SPF_FAIL_ACTION,
      dmarcEnforce: config.TERN_DMARC_ENFORCE,
      arcTrustedSealers: config.TERN_ARC_TRUSTED_SEALERS,
      maxMessageSize: config.TERN_MAX_MESSAGE_SIZE,
      timeoutMs: config.TERN_DNS_TIMEOUT_MS,
    },
    /** Postfix policy servers; undefined = none. */
    delegation: config.TERN_POLICY_SERVERS.length
      ? { servers: config.TERN_POLICY_SERVERS, timeoutMs: config.TERN_POLICY_SERVER_TIMEOUT_MS, stages: config.TERN_POLICY_SERVER_STAGES, defaultAction: config.TERN_POLICY_SERVER_DEFAULT_ACTION }
      : undefined,
    /** undefined = greylisting off. */
    greylist: config.TERN_GREYLIST
      ? { delaySec: config.TERN_GREYLIST_DELAY_S, retryWindowSec: config.TERN_GREYLIST_RETRY_WINDOW_S, keepSec: config.TERN_GREYLIST_KEEP_S, autoWhitelistAfter: config.TERN_GREYLIST_AUTO_WHITELIST }
      : undefined,
    suppression: { keepS: config.TERN_SUPPRESSION_KEEP_S, sweepMs: config.TERN_SUPPRESSION_SWEEP_MS, enforce: config.TERN_SUPPRESSION_ENFORCE },
    verify: {
      deliveryAddr: config.TERN_DELIVERY_ADDR,
      sweepMs: VERIFY_SWEEP_MS,
      callout: {
        positiveTtlS: config.TERN_VERIFY_POSITIVE_TTL_S,
        negativeTtlS: config.TERN_VERIFY_NEGATIVE_TTL_S,
        timeoutMs: config.TERN_VERIFY_TIMEOUT_MS,
        maxInflight: config.TERN_VERIFY_MAX_INFLIGHT,
        maxInflightPerDomain: config.TERN_VERIFY_MAX_INFLIGHT_PER_DOMAIN,
        ratePerDomain: config.TERN_VERIFY_RATE_PER_DOMAIN,
      },
    },
    dkimKek: config.TERN_DKIM_KEK,
    decisionCacheMs: config.TERN_POLICY_DECISION_CACHE_MS,
  };
}

export type PolicyOptions = ReturnType<typeof compileOptions>;
