// The whole platform on loopback, each service its own process, wired the way
// the Helm chart wires pods: `npm start`, the end-to-end tests, the crash tests
// and the benchmark all start Tern through this one function.
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Harness } from './harness';
import type { ServiceHandle } from './services';
import { selfSignedCert } from './tls';

export const SERVICE_NAMES = ['policy', 'queue', 'delivery', 'bounce', 'webhooks', 'admin', 'ingress'] as const;
export type ServiceName = (typeof SERVICE_NAMES)[number];

export interface PlatformOptions {
  databaseUrl: string;
  natsUrl: string;
  /** The resolver delivery and policy use ("127.0.0.1:5353"). */
  dnsServer: string;
  /** Port delivery connects to on MX hosts (sinks listen there on 127.0.0.x). */
  remoteSmtpPort: number;
  /** MX listener; 0 = a free port. */
  smtpPort?: number;
  /** Our name in greetings, EHLO and Reporting-MTA. */
  hostname?: string;
  trustedNetworks?: string;
  otlpEndpoint?: string;
  logLevel?: string;
  /** Operator token for the admin API (generated when absent). */
  adminToken?: string;
  /** Per-service environment added last (knobs for a test). */
  env?: Partial<Record<ServiceName, Record<string, string>>>;
  /** Start only these (default all), in dependency order. */
  only?: ServiceName[];
  /** Listen on the documented ports (gRPC 7000-7006, metrics 9100-9106) instead of free ones. */
  standardPorts?: boolean;
}

/** The documented local ports (ARCHITECTURE.md). */
export const STANDARD_PORTS: Record<ServiceName, { grpc: number; metrics: number }> = {
  admin: { grpc: 7000, metrics: 9100 },
  ingress: { grpc: 7001, metrics: 9101 },
  policy: { grpc: 7002, metrics: 9102 },
  queue: { grpc: 7003, metrics: 9103 },
  delivery: { grpc: 7004, metrics: 9104 },
  bounce: { grpc: 7005, metrics: 9105 },
  webhooks: { grpc: 7006, metrics: 9106 },
};

export interface Platform {
  services: Record<ServiceName, ServiceHandle>;
  smtpHost: string;
  smtpPort: number;
  adminAddr: string;
  adminToken: string;
  queueAddr: string;
  policyAddr: string;
}

/** Starts the services through `harness` (which stops them on close). */
export async function startPlatform(harness: Harness, opts: PlatformOptions): Promise<Platform> {
  const addr = async () => `127.0.0.1:${await harness.freePort()}`;
  const grpc = {} as Record<ServiceName, string>;
  const metrics = {} as Record<ServiceName, string>;
  for (const name of SERVICE_NAMES) {
    grpc[name] = opts.standardPorts ? `127.0.0.1:${STANDARD_PORTS[name].grpc}` : await addr();
    metrics[name] = opts.standardPorts ? `127.0.0.1:${STANDARD_PORTS[name].metrics}` : await addr();
  }
  const smtpPort = opts.smtpPort || (await harness.freePort());
  const adminToken = opts.adminToken ?? crypto.randomBytes(18).toString('base64url');
  const common: Record<string, string> = {
    TERN_LOG_LEVEL: opts.logLevel ?? 'info',
    TERN_HOSTNAME: opts.hostname ?? 'mx.tern.test',
    TERN_SHUTDOWN_GRACE_MS: '5000',
    ...(opts.otlpEndpoint ? { OTEL_EXPORTER_OTLP_ENDPOINT: opts.otlpEndpoint } : {}),
  };
  const env: Record<ServiceName, Record<string, string>> = {
    policy: {
      TERN_DATABASE_URL: opts.databaseUrl,
      TERN_TRUSTED_NETWORKS: opts.trustedNetworks ?? '127.0.0.1/32',
      TERN_DNS_SERVERS: opts.dnsServer,
      // Recipient verification of relay domains (DeliveryService.VerifyRecipient), as the chart wires it.
      TERN_DELIVERY_ADDR: grpc.delivery,
    },
    queue: { TERN_DATABASE_URL: opts.databaseUrl, TERN_NATS_URL: opts.natsUrl },
    delivery: {
      TERN_NATS_URL: opts.natsUrl,
      TERN_QUEUE_ADDR: grpc.queue,
      TERN_DNS_SERVERS: opts.dnsServer,
      TERN_SMTP_PORT: String(opts.remoteSmtpPort),
      // The admin API's DKIM keys (GetDkimSigningKeys), as the chart wires it.
      TERN_POLICY_ADDR: grpc.policy,
    },
    bounce: { TERN_NATS_URL: opts.natsUrl, TERN_QUEUE_ADDR: grpc.queue, TERN_POLICY_ADDR: grpc.policy },
    // Receivers of tests and of npm start listen on loopback over plain HTTP.
    webhooks: { TERN_DATABASE_URL: opts.databaseUrl, TERN_NATS_URL: opts.natsUrl, TERN_WEBHOOKS_ALLOW_HTTP: 'true', TERN_WEBHOOKS_ALLOW_PRIVATE: 'true' },
    admin: { TERN_QUEUE_ADDR: grpc.queue, TERN_POLICY_ADDR: grpc.policy, TERN_WEBHOOKS_ADDR: grpc.webhooks, TERN_ADMIN_TOKENS: `operator:${adminToken}` },
    ingress: {
      TERN_POLICY_ADDR: grpc.policy,
      TERN_QUEUE_ADDR: grpc.queue,
      TERN_SMTP_LISTEN: `127.0.0.1:${smtpPort}`,
      TERN_SUBMISSION_LISTEN: 'off',
      TERN_SUBMISSIONS_LISTEN: 'off',
    },
  };
  const services = {} as Record<ServiceName, ServiceHandle>;
  const wanted = new Set(opts.only ?? SERVICE_NAMES);
  // Owners first, so dependants find them ready (they would retry anyway).
  for (const name of SERVICE_NAMES) {
    if (!wanted.has(name)) continue;
    services[name] = await harness.startService(name, {
      ...common,
      TERN_GRPC_LISTEN: grpc[name],
      TERN_METRICS_LISTEN: metrics[name],
      ...env[name],
      ...opts.env?.[name],
    });
  }
  return {
    services,
    smtpHost: '127.0.0.1',
    smtpPort,
    adminAddr: grpc.admin,
    adminToken,
    queueAddr: grpc.queue,
    policyAddr: grpc.policy,
  };
}

/**
 * Ingress settings for a submission listener (STARTTLS, then AUTH) on a free
 * port, with a fresh self-signed certificate written to a temporary directory
 * that the harness removes. Pass `env` as `env.ingress` of startPlatform.
 */
export async function submissionListener(harness: Harness, names = ['mx.tern.test', '127.0.0.1']): Promise<{ port: number; env: Record<string, string> }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-submission-'));
  harness.defer(() => fs.rmSync(dir, { recursive: true, force: true }), 'remove submission tls dir');
  const cert = selfSignedCert({ names });
  fs.writeFileSync(path.join(dir, 'tls.crt'), cert.cert);
  fs.writeFileSync(path.join(dir, 'tls.key'), cert.key, { mode: 0o600 });
  const port = await harness.freePort();
  return {
    port,
    env: {
      TERN_SUBMISSION_LISTEN: `127.0.0.1:${port}`,
      TERN_TLS_CERT_FILE: path.join(dir, 'tls.crt'),
      TERN_TLS_KEY_FILE: path.join(dir, 'tls.key'),
    },
  };
}
