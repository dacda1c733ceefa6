// Delivery's settings compiled once (as the queue's options.ts): the
// environment, read and checked by config.ts, becomes one defaulted object
// with a section per part, and app.ts hands each part its own. Files named
// by the environment (the CA, the DKIM keys) are read here, once, at start.
import fs from 'node:fs';
import os from 'node:os';
import { errorMessage } from '@tern/runtime';
import type { Config } from './config';
import { DkimSigner, parseDkimKeys } from './dkim';
import type { WorkerDeps } from './worker';

/** The worker's settings (WorkerDeps without its collaborators). */
export type WorkerSettings = Omit<WorkerDeps, 'logger' | 'resolver' | 'pool' | 'queue' | 'mtaSts' | 'dane'>;

export interface DeliveryOptions {
  nats: { url: string; name: string };
  listen: { grpc: { host: string; port: number }; metrics: { host: string; port: number } };
  queueAddr: string;
  policyAddr: string | undefined;
  worker: WorkerSettings;
  pool: { maxMessagesPerConnection: number; idleMs: number; maxSessionsPerPeer: number };
  resolver: { servers: string[]; port: number; ownNames: string[]; timeoutMs: number };
  /** DANE through the first resolver; undefined = off. */
  dane: { servers: string[]; timeoutMs: number } | undefined;
  /** MTA-STS policy fetches; undefined = off. */
  mtaSts: { port: number; timeoutMs: number } | undefined;
  /** The admin API's DKIM keys, asked of policy (with policyAddr). */
  dkimRefresh: { kek: Buffer | undefined; intervalMs: number; deadlineMs: number };
  results: { maxResults: number; delayMs: number };
  consumer: { concurrency: number; retryDelayMs: number };
  verify: { sender: string; timeoutMs: number; maxInflight: number; maxSessionsPerPeer: number; routesRefreshMs: number };
}

export function compileOptions(config: Config): DeliveryOptions {
  const heloName = config.TERN_HELO_NAME ?? config.TERN_HOSTNAME;
  return {
    nats: { url: config.TERN_NATS_URL, name: `tern-delivery-${os.hostname()}-${process.pid}` },
    listen: { grpc: config.TERN_GRPC_LISTEN, metrics: config.TERN_METRICS_LISTEN },
    queueAddr: config.TERN_QUEUE_ADDR,
    policyAddr: config.TERN_POLICY_ADDR,
    worker: {
      worker: `${os.hostname()}/${process.pid}`,
      heloName,
      localAddress: config.TERN_SOURCE_ADDRESS,
      smtpPort: config.TERN_SMTP_PORT,
      connectTimeoutMs: config.TERN_SMTP_CONNECT_TIMEOUT_MS,
      commandTimeoutMs: config.TERN_SMTP_COMMAND_TIMEOUT_MS,
      dataEndTimeoutMs: config.TERN_SMTP_DATA_END_TIMEOUT_MS,
      queueDeadlineMs: config.TERN_QUEUE_DEADLINE_MS,
      tlsCa: readCa(config.TERN_SMTP_TLS_CA_FILE),
      dkim: dkimSigner(config.TERN_DKIM_KEYS, Boolean(config.TERN_POLICY_ADDR)),
      // Read at each use, so that a rotated secret is picked up without a restart.
      secretsDir: config.TERN_SMTP_AUTH_SECRETS_DIR,
    },
    pool: {
      maxMessagesPerConnection: config.TERN_SMTP_MAX_MESSAGES_PER_CONNECTION,
      idleMs: config.TERN_SMTP_IDLE_MS,
      maxSessionsPerPeer: config.TERN_SMTP_MAX_SESSIONS_PER_PEER,
    },
    resolver: { servers: config.TERN_DNS_SERVERS, port: config.TERN_SMTP_PORT, ownNames: [heloName.toLowerCase(), config.TERN_HOSTNAME.toLowerCase()], timeoutMs: config.TERN_DNS_TIMEOUT_MS },
    dane: config.TERN_DANE ? { servers: config.TERN_DNS_SERVERS, timeoutMs: config.TERN_DNS_TIMEOUT_MS } : undefined,
    mtaSts: config.TERN_MTA_STS ? { port: config.TERN_MTA_STS_PORT, timeoutMs: 30_000 } : undefined,
    dkimRefresh: { kek: config.TERN_DKIM_KEK, intervalMs: config.TERN_DKIM_REFRESH_MS, deadlineMs: 5_000 },
    results: { maxResults: config.TERN_RESULT_BATCH_MAX, delayMs: config.TERN_RESULT_BATCH_DELAY_MS },
    consumer: { concurrency: config.TERN_CONCURRENCY, retryDelayMs: 10_000 },
    verify: {
      sender: config.TERN_VERIFY_SENDER,
      timeoutMs: config.TERN_VERIFY_TIMEOUT_MS,
      maxInflight: config.TERN_VERIFY_MAX_INFLIGHT,
      maxSessionsPerPeer: config.TERN_SMTP_MAX_SESSIONS_PER_PEER,
      routesRefreshMs: config.TERN_VERIFY_ROUTES_REFRESH_MS,
    },
  };
}

/** The CA file, read once at start; an unreadable one stops the process naming the variable. */
function readCa(file: string | undefined): Buffer | undefined {
  if (!file) return undefined;
  try {
    return fs.readFileSync(file);
  } catch (err) {
    throw new Error(`TERN_SMTP_TLS_CA_FILE: cannot read ${file}: ${errorMessage(err)}`, { cause: err });
  }
}

/** File keys read and checked once at start (a bad entry stops the process naming the variable); with policy, the API's keys join them. */
function dkimSigner(entries: string[], fromApi: boolean): DkimSigner | undefined {
  if (!entries.length) return fromApi ? new DkimSigner() : undefined;
  try {
    return new DkimSigner(parseDkimKeys(entries, (file) => fs.readFileSync(file, 'utf8')));
  } catch (err) {
    throw new Error(`TERN_DKIM_KEYS: ${errorMessage(err)}`, { cause: err });
  }
}
