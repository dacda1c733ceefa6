// Wires the policy service: Postgres pool, the in-memory policy data kept
// fresh by LISTEN/NOTIFY, the decision engine, and the gRPC server. Health
// turns SERVING once the data is loaded.
import type http from 'node:http';
import { createPool } from '@tern/db';
import { createClient, GrpcServer } from '@tern/grpc';
import { DeliveryServiceClient, PolicyServiceService } from '@tern/proto';
import type { Telemetry } from '@tern/telemetry';
import { PolicyCache } from './cache';
import type { Config } from './config';
import { Delegation } from './delegation';
import { createDns } from './dns';
import { Dnsbl } from './dnsbl';
import { Engine } from './engine';
import { Greylist } from './greylist';
import { DkimKeyStore } from './dkim-keys';
import { RateLimitRules } from './limits';
import { RewriteRules } from './rewrites';
import { Srs } from './srs';
import { MilterStore } from './milters';
import { MessageAuth } from './messageauth';
import { RateLimiter } from './ratelimit';
import { createPolicyService, type CheckHook } from './service';
import { SuppressionStore, suppressionHook } from './suppression';
import { RelayRecipientStore } from './relay-recipients';
import { recipientCheckHook, VerifyCache } from './verify';
import { PolicyStore } from './store';

export interface AppDeps {
  telemetry: Pick<Telemetry, 'logger' | 'tracer' | 'meter' | 'serveMetrics'>;
  /** Tests: serve no /metrics endpoint. */
  noMetricsServer?: boolean;
}

export interface App {
  start(): Promise<void>;
  stop(): Promise<void>;
  /** Bound gRPC port (useful with port 0). */
  readonly grpcPort: number;
  readonly cache: PolicyCache;
}

export function createApp(config: Config, deps: AppDeps): App {
  const { logger, tracer, meter } = deps.telemetry;
  const pool = createPool({ url: config.TERN_DATABASE_URL, max: config.TERN_DATABASE_POOL_MAX, applicationName: 'tern-policy', logger });
  const store = new PolicyStore(pool);
  const snapshots = meter.createHistogram('tern_policy_reload_duration_seconds', { description: 'Full reload of the policy data', unit: 's' });
  const cache = new PolicyCache({
    store,
    databaseUrl: config.TERN_DATABASE_URL,
    reloadMs: config.TERN_POLICY_RELOAD_MS,
    logger,
    onReload: (s, ms) => {
      snapshots.record(ms / 1000);
      logger.debug({ domains: s.domains.size, mailboxes: s.mailboxes.size, aliases: s.aliases.size, users: s.users.size, ms }, 'policy data loaded');
      // The rate-limit rules follow the same notifications (their table NOTIFYs too).
      rateLimits.load().catch((err: Error) => logger.warn({ err: err.message }, 'rate-limit rules not reloaded; the next reload tries again'));
      rewrites.load().catch((err: Error) => logger.warn({ err: err.message }, 'rewrite rules not reloaded; the next reload tries again'));
    },
  });
  const rewrites = new RewriteRules(pool, config.TERN_RECIPIENT_DELIMITER);
  const srs = config.TERN_SRS_DOMAIN
    ? new Srs({ domain: config.TERN_SRS_DOMAIN, secrets: config.TERN_SRS_SECRETS, maxAgeDays: config.TERN_SRS_MAX_AGE_DAYS })
    : undefined;
  const engine = new Engine(
    {
      trustedNetworks: config.TERN_TRUSTED_NETWORKS,
      recipientDelimiter: config.TERN_RECIPIENT_DELIMITER,
      maxMessageSize: config.TERN_MAX_MESSAGE_SIZE,
      aliasMaxDepth: config.TERN_ALIAS_MAX_DEPTH,
      aliasMaxTargets: config.TERN_ALIAS_MAX_TARGETS,
      rewrites,
      srs,
    },
    () => cache.snapshot,
  );

  // Checks after the built-in rules, in this order; each acts only on an accept.
  const hooks: CheckHook[] = [];
  // The TERN_LIMIT_* variables are the defaults under the admin API's rules (limits.ts).
  const rateLimits = new RateLimitRules(pool, {
    connectionsPerIp: config.TERN_LIMIT_CONNECTIONS_PER_IP,
    messagesPerIp: config.TERN_LIMIT_MESSAGES_PER_IP,
    messagesPerUser: config.TERN_LIMIT_MESSAGES_PER_USER,
    recipientsPerUser: config.TERN_LIMIT_RECIPIENTS_PER_USER,
    messagesPerSenderDomain: config.TERN_LIMIT_MESSAGES_PER_SENDER_DOMAIN,
    recipientsPerSenderDomain: config.TERN_LIMIT_RECIPIENTS_PER_SENDER_DOMAIN,
    authFailuresPerIp: config.TERN_LIMIT_AUTH_FAILURES_PER_IP,
  });
  const limiter = new RateLimiter(pool, rateLimits);
  hooks.push(Object.assign(limiter.hook, { pure: limiter.pure }));
  const dns = createDns(config.TERN_DNS_SERVERS, config.TERN_DNS_TIMEOUT_MS);
  if (config.TERN_DNSBL_ZONES.length) {
    const dnsbl = new Dnsbl(config.TERN_DNSBL_ZONES, dns, logger);
    hooks.push(Object.assign(dnsbl.hook, { pure: dnsbl.pure }));
  }
  const messageAuth = new MessageAuth({
    resolver: dns.resolve,
    hostname: config.TERN_HOSTNAME,
    spfFailAction: config.TERN_SPF_FAIL_ACTION,
    dmarcEnforce: config.TERN_DMARC_ENFORCE,
    arcTrustedSealers: config.TERN_ARC_TRUSTED_SEALERS,
    maxMessageSize: config.TERN_MAX_MESSAGE_SIZE,
    snapshot: () => cache.snapshot,
    logger,
    timeoutMs: config.TERN_DNS_TIMEOUT_MS,
  });
  hooks.push(Object.assign(messageAuth.hook, { pure: messageAuth.pure }));
  const delegation = config.TERN_POLICY_SERVERS.length
    ? new Delegation({
        servers: config.TERN_POLICY_SERVERS,
        timeoutMs: config.TERN_POLICY_SERVER_TIMEOUT_MS,
        stages: config.TERN_POLICY_SERVER_STAGES,
        defaultAction: config.TERN_POLICY_SERVER_DEFAULT_ACTION,
        logger,
      })
    : undefined;
  if (delegation) hooks.push(delegation.hook);
  const greylist = config.TERN_GREYLIST
    ? new Greylist(pool, {
        delaySec: config.TERN_GREYLIST_DELAY_S,
        retryWindowSec: config.TERN_GREYLIST_RETRY_WINDOW_S,
        keepSec: config.TERN_GREYLIST_KEEP_S,
        autoWhitelistAfter: config.TERN_GREYLIST_AUTO_WHITELIST,
      })
    : undefined;
  if (greylist) hooks.push(greylist.hook);
  const suppressions = new SuppressionStore(pool, config.TERN_SUPPRESSION_KEEP_S);
  if (config.TERN_SUPPRESSION_ENFORCE.size) hooks.push(suppressionHook(suppressions, config.TERN_SUPPRESSION_ENFORCE));
  // Relay domains' recipients (list or callout) last: a client refused by a cheaper check causes no callout.
  const relayRecipients = new RelayRecipientStore(pool);
  const verifyCache = new VerifyCache(pool);
  const delivery = config.TERN_DELIVERY_ADDR ? createClient(DeliveryServiceClient, config.TERN_DELIVERY_ADDR, { deadlineMs: 0 }) : undefined;
  hooks.push(
    recipientCheckHook({
      snapshot: () => cache.snapshot,
      relayRecipients,
      cache: verifyCache,
      delivery,
      counter: limiter,
      options: {
        positiveTtlS: config.TERN_VERIFY_POSITIVE_TTL_S,
        negativeTtlS: config.TERN_VERIFY_NEGATIVE_TTL_S,
        timeoutMs: config.TERN_VERIFY_TIMEOUT_MS,
        maxInflight: config.TERN_VERIFY_MAX_INFLIGHT,
        maxInflightPerDomain: config.TERN_VERIFY_MAX_INFLIGHT_PER_DOMAIN,
        ratePerDomain: config.TERN_VERIFY_RATE_PER_DOMAIN,
      },
      logger,
      meter,
    }),
  );

  const dkimKeys = new DkimKeyStore(pool, config.TERN_DKIM_KEK);

  // Readiness (/readyz and gRPC health alike): started (policy data loaded), not stopping.
  const grpcServer = new GrpcServer({ logger, tracer, ready: () => cache.ready });
  grpcServer.add(
    'tern.v1.PolicyService',
    PolicyServiceService,
    createPolicyService({ store, suppressions, relayRecipients, verifyCache, milters: new MilterStore(pool), dkimKeys, rateLimits, rewrites, srs, cache, engine, logger, meter, hooks, messageChecker: messageAuth, authGuard: limiter, decisionCacheMs: config.TERN_POLICY_DECISION_CACHE_MS }),
  );
  let metricsServer: http.Server | undefined;

  return {
    cache,
    get grpcPort() {
      return grpcServer.port;
    },
    async start() {
      // Stored DKIM keys must open with TERN_DKIM_KEK, or policy does not start (naming the variable).
      const sealed = await dkimKeys.checkKek();
      if (sealed) logger.info({ keys: sealed }, 'stored DKIM keys open with TERN_DKIM_KEK');
      await rateLimits.load();
      await rewrites.load();
      await cache.start();
      limiter.startCleanup();
      greylist?.startCleanup();
      suppressions.startSweep(config.TERN_SUPPRESSION_SWEEP_MS, (err) => logger.warn({ err: err.message }, 'removing expired suppressions failed; the next sweep tries again'));
      verifyCache.startSweep(60_000, (err) => logger.warn({ err: err.message }, 'removing expired verification results failed; the next sweep tries again'));
      if (!deps.noMetricsServer) {
        metricsServer = await deps.telemetry.serveMetrics(config.TERN_METRICS_LISTEN.host, config.TERN_METRICS_LISTEN.port, () => grpcServer.ready());
      }
      const port = await grpcServer.listen(config.TERN_GRPC_LISTEN.host, config.TERN_GRPC_LISTEN.port);
      grpcServer.serve();
      logger.info({ grpc: port, trustedNetworks: config.TERN_TRUSTED_NETWORKS.map(([a, b]) => `${a.toString()}/${b}`) }, 'policy serving');
    },
    async stop() {
      await grpcServer.shutdown(config.TERN_SHUTDOWN_GRACE_MS);
      await cache.stop();
      limiter.stop();
      greylist?.stop();
      suppressions.stop();
      verifyCache.stop();
      delivery?.close();
      delegation?.close();
      await new Promise<void>((resolve) => (metricsServer ? metricsServer.close(() => resolve()) : resolve()));
      await pool.end();
    },
  };
}
