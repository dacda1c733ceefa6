// Wires the policy service: Postgres pool, the in-memory policy data kept
// fresh by LISTEN/NOTIFY, the decision engine, and the gRPC server, each a
// part started in order and stopped in reverse (libs/runtime Components).
// Health turns SERVING once the data is loaded.
import { createPool } from '@tern/db';
import { createClient, GrpcServer } from '@tern/grpc';
import { DeliveryServiceClient, PolicyServiceService } from '@tern/proto';
import { Components, errorMessage, HttpServerPart, part, type AppDeps } from '@tern/runtime';
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
import { compileOptions } from './options';

export type { AppDeps };

export interface App {
  start(): Promise<void>;
  stop(): Promise<void>;
  /** Bound gRPC port (useful with port 0). */
  readonly grpcPort: number;
  readonly cache: PolicyCache;
}

export function createApp(config: Config, deps: AppDeps): App {
  const { logger, tracer, meter } = deps.telemetry;
  const o = compileOptions(config);
  const pool = createPool({ ...o.database, logger });
  const store = new PolicyStore(pool);
  const snapshots = meter.createHistogram('tern_policy_reload_duration_seconds', { description: 'Full reload of the policy data', unit: 's' });
  const cache = new PolicyCache({
    store,
    ...o.cache,
    logger,
    onReload: (s, ms) => {
      snapshots.record(ms / 1000);
      logger.debug({ domains: s.domains.size, mailboxes: s.mailboxes.size, aliases: s.aliases.size, users: s.users.size, ms }, 'policy data loaded');
      // The rate-limit rules follow the same notifications (their table NOTIFYs too).
      rateLimits.load().catch((err: unknown) => logger.warn({ err: errorMessage(err) }, 'rate-limit rules not reloaded; the next reload tries again'));
      rewrites.load().catch((err: unknown) => logger.warn({ err: errorMessage(err) }, 'rewrite rules not reloaded; the next reload tries again'));
    },
  });
  const rewrites = new RewriteRules(pool, o.recipientDelimiter);
  const srs = o.srs ? new Srs(o.srs) : undefined;
  const engine = new Engine({ ...o.engine, rewrites, srs }, () => cache.snapshot);

  // Checks after the built-in rules, in this order; each acts only on an accept.
  const hooks: CheckHook[] = [];
  const rateLimits = new RateLimitRules(pool, o.rateLimits);
  const limiter = new RateLimiter(pool, rateLimits);
  hooks.push(Object.assign(limiter.hook, { pure: limiter.pure }));
  const dns = createDns(o.dns.servers, o.dns.timeoutMs);
  if (o.dnsblZones.length) {
    const dnsbl = new Dnsbl(o.dnsblZones, dns, logger);
    hooks.push(Object.assign(dnsbl.hook, { pure: dnsbl.pure }));
  }
  const messageAuth = new MessageAuth({ ...o.messageAuth, resolver: dns.resolve, snapshot: () => cache.snapshot, logger });
  hooks.push(Object.assign(messageAuth.hook, { pure: messageAuth.pure }));
  const delegation = o.delegation ? new Delegation({ ...o.delegation, logger }) : undefined;
  if (delegation) hooks.push(delegation.hook);
  const greylist = o.greylist ? new Greylist(pool, o.greylist) : undefined;
  if (greylist) hooks.push(greylist.hook);
  const suppressions = new SuppressionStore(pool, o.suppression.keepS);
  if (o.suppression.enforce.size) hooks.push(suppressionHook(suppressions, o.suppression.enforce));
  // Relay domains' recipients (list or callout) last: a client refused by a cheaper check causes no callout.
  const relayRecipients = new RelayRecipientStore(pool);
  const verifyCache = new VerifyCache(pool);
  const delivery = o.verify.deliveryAddr ? createClient(DeliveryServiceClient, o.verify.deliveryAddr, { deadlineMs: 0 }) : undefined;
  hooks.push(
    recipientCheckHook({
      snapshot: () => cache.snapshot,
      relayRecipients,
      cache: verifyCache,
      delivery,
      counter: limiter,
      options: o.verify.callout,
      logger,
      meter,
    }),
  );

  const dkimKeys = new DkimKeyStore(pool, o.dkimKek);

  // Readiness (/readyz and gRPC health alike): started (policy data loaded), not stopping.
  const grpcServer = new GrpcServer({ logger, tracer, ready: () => cache.ready });
  grpcServer.add(
    'tern.v1.PolicyService',
    PolicyServiceService,
    createPolicyService({ store, suppressions, relayRecipients, verifyCache, milters: new MilterStore(pool), dkimKeys, rateLimits, rewrites, srs, cache, engine, logger, meter, hooks, messageChecker: messageAuth, authGuard: limiter, decisionCacheMs: o.decisionCacheMs }),
  );

  // Started in this order, stopped in reverse: not ready, then the calls in
  // flight finish within the grace period, /metrics, the sweeps, the
  // policy data's LISTEN connection, the clients, and last the pool.
  const parts = new Components(logger);
  parts.add('pool', part('Postgres pool', { drain: () => pool.end() }));
  parts.add('clients', part('clients', { drain: () => (delivery?.close(), delegation?.close()) }));
  parts.add(
    'policy data',
    part('policy data', {
      start: async () => {
        // Stored DKIM keys must open with TERN_DKIM_KEK, or policy does not start (naming the variable).
        const sealed = await dkimKeys.checkKek();
        if (sealed) logger.info({ keys: sealed }, 'stored DKIM keys open with TERN_DKIM_KEK');
        await rateLimits.load();
        await rewrites.load();
        await cache.start();
      },
      drain: () => cache.stop(),
    }),
  );
  parts.add(
    'sweeps',
    part('sweeps', {
      start: () => {
        limiter.startCleanup();
        greylist?.startCleanup();
        suppressions.startSweep(o.suppression.sweepMs, (err) => logger.warn({ err: err.message }, 'removing expired suppressions failed; the next sweep tries again'));
        verifyCache.startSweep(o.verify.sweepMs, (err) => logger.warn({ err: err.message }, 'removing expired verification results failed; the next sweep tries again'));
      },
      drain: () => {
        limiter.stop();
        greylist?.stop();
        suppressions.stop();
        verifyCache.stop();
      },
    }),
  );
  if (!deps.noMetricsServer) {
    parts.add('metrics', new HttpServerPart('metrics', () => deps.telemetry.serveMetrics(o.listen.metrics.host, o.listen.metrics.port, () => grpcServer.ready())));
  }
  parts.add('grpc', grpcServer.listener(o.listen.grpc.host, o.listen.grpc.port, o.listen.graceMs));
  parts.add('readiness', grpcServer.readiness());

  return {
    cache,
    get grpcPort() {
      return grpcServer.port;
    },
    async start() {
      await parts.start();
      logger.info({ grpc: grpcServer.port, trustedNetworks: o.engine.trustedNetworks.map(([a, b]) => `${a.toString()}/${b}`) }, 'policy serving');
    },
    stop: () => parts.stop(),
  };
}
