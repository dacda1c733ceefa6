// Process harness for cross-service tests: a fresh Postgres database, a
// private nats-server with JetStream, the services as child processes (the
// way pods run), and a cleanup registry so `await harness.close()` in
// `after()` stops everything, even after a failure.
//
//   const h = new Harness();
//   after(() => h.close());
//   const db = await h.createTestDatabase();
//   await h.runMigrate(db.url);
//   const nats = await h.startNats();
//   const queue = await h.startService('queue', { TERN_DATABASE_URL: db.url, TERN_NATS_URL: nats.url });
//   ... queue.grpcAddr, await queue.kill(), await queue.restart()
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import crypto from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import pg from 'pg';
import { DnsServer, type DnsServerOptions } from './dns';
import { OtlpReceiver, type OtlpReceiverOptions } from './otlp';
import { SmtpSink, type SmtpSinkOptions } from './sink';

// ------------------------------------------------------------------ paths

let cachedRoot: string | undefined;

/** The repository root: TERN_ROOT, else the nearest ancestor of this file (or cwd) whose package.json is "tern". */
export function repoRoot(): string {
  if (cachedRoot) return cachedRoot;
  if (process.env.TERN_ROOT) return (cachedRoot = path.resolve(process.env.TERN_ROOT));
  for (const start of [__dirname, process.cwd()]) {
    let dir = start;
    for (;;) {
      try {
        const pkg = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8')) as { name?: string; workspaces?: unknown };
        if (pkg.name === 'tern' && pkg.workspaces) return (cachedRoot = dir);
      } catch {
        /* keep looking */
      }
      const parent = path.dirname(dir);
      if (parent === dir) break;
      dir = parent;
    }
  }
  throw new Error('@tern/devkit: cannot find the repository root (set TERN_ROOT)');
}

/** Node 24 from node_modules/.bin (the node@24 devDependency), else this process's node. */
export function nodeBinary(): string {
  const local = path.join(repoRoot(), 'node_modules', '.bin', 'node');
  return fs.existsSync(local) ? local : process.execPath;
}

/**
 * Node flags every Tern service runs with (the image's tern-entry repeats
 * them). V8 starts a full mark as soon as the room left before its old-space
 * limit is less than what a young generation could promote; with the default
 * 32 MB young generation and a ~25-30 MB live heap growing by the default
 * factor, that was right after every full GC, and the services carrying
 * 64 KiB bodies spent 20-40% of their CPU marking (a mark-compact every
 * 100-330 ms freeing 2-4 MB). A young generation of 8 MB and an old-space
 * limit three times the live heap end it: 64 KiB -25-35% CPU per message,
 * +30-50% throughput; 4 KiB unchanged; RSS unchanged or lower. See
 * docs/performance.md.
 */
export const SERVICE_NODE_FLAGS: readonly string[] = ['--max-semi-space-size=8', '--heap-growing-percent=200'];

function sanitize(s: string): string {
  return s.replace(/\.test\.[cm]?[jt]s$/, '').replace(/[^A-Za-z0-9._-]+/g, '-').replace(/^-+|-+$/g, '') || 'test';
}

/** Default test name: the running test file's base name (node --test runs one file per process). */
function defaultTestName(): string {
  const file = process.argv.find((a) => /\.test\.[cm]?[jt]s$/.test(a)) ?? process.argv[1] ?? 'test';
  return sanitize(path.basename(file));
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

// ------------------------------------------------------------------ ports

/** A free TCP port on `host` (default 127.0.0.1), as the OS hands one out. */
// Ports for test listeners are handed out from below the kernel's ephemeral
// range (32768-60999 on Linux), so an outgoing connection can never be
// holding one, and each is claimed with a lock file shared by every test
// process on the machine (a port asked for by two test files at once was the
// cause of EADDRINUSE flakes: freePort() then a later bind elsewhere).
const PORT_RANGE = { min: 20_000, max: 32_000 };
const PORT_LOCK_DIR = path.join(os.tmpdir(), 'tern-test-ports');
const claimedPorts = new Set<number>();

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Takes the lock file of `port` for this process; false when a live process holds it. */
function claimPort(port: number): boolean {
  fs.mkdirSync(PORT_LOCK_DIR, { recursive: true });
  const file = path.join(PORT_LOCK_DIR, String(port));
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      fs.writeFileSync(file, String(process.pid), { flag: 'wx' });
      if (claimedPorts.size === 0) {
        process.once('exit', () => {
          for (const p of claimedPorts) fs.rmSync(path.join(PORT_LOCK_DIR, String(p)), { force: true });
        });
      }
      claimedPorts.add(port);
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const owner = Number(fs.readFileSync(file, 'utf8').trim());
      if (owner && pidAlive(owner)) return false;
      fs.rmSync(file, { force: true }); // its process is gone: a stale claim
    }
  }
  return false;
}

function bindable(port: number, host: string): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.unref();
    srv.once('error', () => resolve(false));
    srv.listen(port, host, () => srv.close(() => resolve(true)));
  });
}

/** A port that is free on `host` now and claimed for this process (see above). */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  for (let i = 0; i < 200; i++) {
    const port = PORT_RANGE.min + crypto.randomInt(PORT_RANGE.max - PORT_RANGE.min);
    if (claimedPorts.has(port) || !claimPort(port)) continue;
    if (await bindable(port, host)) return port;
  }
  throw new Error(`no free port in ${PORT_RANGE.min}-${PORT_RANGE.max} on ${host} after 200 tries`);
}

// --------------------------------------------------------------- Postgres

export interface TestDatabase {
  name: string;
  /** URL of the new database (same credentials as the admin URL). */
  url: string;
  adminUrl: string;
  /** Drops the database (terminating its connections). Idempotent. */
  drop(): Promise<void>;
}

export const DEFAULT_TEST_PG_URL = 'postgres://tern:tern@127.0.0.1:5432/postgres';

export function testPgAdminUrl(): string {
  return process.env.TERN_TEST_PG_URL || DEFAULT_TEST_PG_URL;
}

/**
 * Creates a uniquely named database on the provisioned Postgres
 * (TERN_TEST_PG_URL, default postgres://tern:tern@127.0.0.1:5432/postgres).
 */
export async function createTestDatabase(opts: { prefix?: string; adminUrl?: string } = {}): Promise<TestDatabase> {
  const adminUrl = opts.adminUrl ?? testPgAdminUrl();
  const prefix = sanitize(opts.prefix ?? 'tern_test').toLowerCase().replace(/[^a-z0-9_]/g, '_').slice(0, 40);
  const name = `${prefix}_${crypto.randomBytes(6).toString('hex')}`;
  const admin = new pg.Client({ connectionString: adminUrl, connectionTimeoutMillis: 5000 });
  try {
    await admin.connect();
  } catch (err) {
    throw new Error(
      `@tern/devkit: cannot connect to Postgres at ${adminUrl.replace(/:[^:@/]*@/, ':***@')} (${(err as Error).message}); run: bash scripts/provision.sh`,
      { cause: err },
    );
  }
  try {
    await admin.query(`CREATE DATABASE "${name}"`);
  } finally {
    await admin.end();
  }
  const u = new URL(adminUrl);
  u.pathname = `/${name}`;
  let dropped = false;
  return {
    name,
    url: u.toString(),
    adminUrl,
    async drop() {
      if (dropped) return;
      dropped = true;
      const c = new pg.Client({ connectionString: adminUrl, connectionTimeoutMillis: 5000 });
      await c.connect();
      try {
        await c.query(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
      } finally {
        await c.end();
      }
    },
  };
}

// ------------------------------------------------------------------- NATS

export interface NatsServerHandle {
  url: string;
  host: string;
  port: number;
  storeDir: string;
  logFile: string;
  readonly pid: number | undefined;
  readonly running: boolean;
  /** SIGTERM (graceful), wait for exit. */
  stop(): Promise<void>;
  /** SIGKILL, wait for exit. */
  kill(): Promise<void>;
  /** Start again on the same port with the same store (stopping it first if running). */
  restart(): Promise<void>;
  /** Stops it and removes the store when it was a temporary one. */
  close(): Promise<void>;
}

/** The nats-server to run: TERN_NATS_SERVER_BIN, the pinned build from scripts/install-nats.sh, PATH, Debian's. */
export function natsServerBinary(): string {
  const candidates = [process.env.TERN_NATS_SERVER_BIN, path.join(repoRoot(), '.tern', 'bin', 'nats-server')];
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) if (dir) candidates.push(path.join(dir, 'nats-server'));
  candidates.push('/usr/sbin/nats-server', '/usr/local/bin/nats-server', '/usr/bin/nats-server');
  for (const c of candidates) {
    if (!c) continue;
    try {
      fs.accessSync(c, fs.constants.X_OK);
      return c;
    } catch {
      /* next */
    }
  }
  throw new Error('@tern/devkit: nats-server not found (TERN_NATS_SERVER_BIN, .tern/bin, PATH, /usr/sbin); run: bash scripts/install-nats.sh');
}

/** Reads a NATS server's INFO line; resolves with its JSON, or undefined if nothing answers. */
export function natsInfo(host: string, port: number, timeoutMs = 1000): Promise<Record<string, unknown> | undefined> {
  return new Promise((resolve) => {
    const s = net.connect({ host, port });
    let buf = '';
    const done = (v: Record<string, unknown> | undefined) => {
      clearTimeout(timer);
      s.destroy();
      resolve(v);
    };
    const timer = setTimeout(() => done(undefined), timeoutMs);
    s.on('error', () => done(undefined));
    s.on('data', (d: Buffer) => {
      buf += d.toString('utf8');
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      const line = buf.slice(0, nl).trim();
      if (!line.startsWith('INFO ')) return done(undefined);
      try {
        done(JSON.parse(line.slice(5)) as Record<string, unknown>);
      } catch {
        done(undefined);
      }
    });
  });
}

/** Starts a private nats-server with JetStream on a free loopback port and a temporary store. */
export async function startNats(opts: { host?: string; port?: number; storeDir?: string; logFile?: string; args?: string[] } = {}): Promise<NatsServerHandle> {
  const bin = natsServerBinary();
  const host = opts.host ?? '127.0.0.1';
  const storeDir = opts.storeDir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'tern-nats-'));
  const ownStore = !opts.storeDir;
  const logFile = opts.logFile ?? path.join(storeDir, 'nats.log');
  fs.mkdirSync(path.dirname(logFile), { recursive: true });
  let port = opts.port ?? 0;
  let child: ChildProcess | undefined;
  let exited: Promise<void> = Promise.resolve();

  const launch = async (): Promise<void> => {
    const log = fs.openSync(logFile, 'a');
    fs.writeSync(log, `--- nats-server ${new Date().toISOString()} port ${port}\n`);
    const c = spawn(bin, ['-js', '-sd', storeDir, '-a', host, '-p', String(port), ...(opts.args ?? [])], {
      stdio: ['ignore', log, log],
    });
    fs.closeSync(log);
    child = c;
    trackChild(c);
    let gone = false;
    exited = new Promise<void>((resolve) => c.once('exit', () => ((gone = true), resolve())));
    const deadline = Date.now() + 15_000;
    while (Date.now() < deadline) {
      if (gone) throw new Error(`nats-server exited during start (log: ${logFile})\n${tail(logFile)}`);
      const info = await natsInfo(host, port, 500);
      if (info?.jetstream === true) return;
      await sleep(50);
    }
    c.kill('SIGKILL');
    throw new Error(`nats-server did not answer with JetStream on ${host}:${port} (log: ${logFile})\n${tail(logFile)}`);
  };

  // A free port can be taken between freePort() and the bind: retry.
  for (let attempt = 0; ; attempt++) {
    if (!opts.port) port = await freePort(host);
    try {
      await launch();
      break;
    } catch (err) {
      if (opts.port || attempt >= 3) throw err;
    }
  }

  const waitExit = async (signal: NodeJS.Signals, graceMs: number) => {
    const c = child;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    c.kill(signal);
    const t = setTimeout(() => c.kill('SIGKILL'), graceMs);
    await exited;
    clearTimeout(t);
  };

  const handle: NatsServerHandle = {
    url: `nats://${host}:${port}`,
    host,
    port,
    storeDir,
    logFile,
    get pid() {
      return child?.pid;
    },
    get running() {
      return !!child && child.exitCode === null && child.signalCode === null;
    },
    stop: () => waitExit('SIGTERM', 10_000),
    kill: () => waitExit('SIGKILL', 5_000),
    async restart() {
      await waitExit('SIGTERM', 10_000);
      await launch();
    },
    async close() {
      await waitExit('SIGTERM', 5_000);
      if (ownStore) fs.rmSync(storeDir, { recursive: true, force: true });
    },
  };
  return handle;
}

// --------------------------------------------------------------- children

const liveChildren = new Set<ChildProcess>();
let exitHookInstalled = false;

/** Every child is SIGKILLed if the test process exits without stopping it. */
function trackChild(c: ChildProcess): void {
  liveChildren.add(c);
  c.once('exit', () => liveChildren.delete(c));
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.once('exit', () => {
      for (const ch of liveChildren) {
        try {
          ch.kill('SIGKILL');
        } catch {
          /* gone */
        }
      }
    });
  }
}

function tail(file: string, lines = 40): string {
  try {
    const text = fs.readFileSync(file, 'utf8');
    return text.split('\n').slice(-lines - 1).join('\n');
  } catch {
    return '';
  }
}

// --------------------------------------------------------------- services

export type Readiness = 'grpc' | 'http' | 'none';

export interface StartServiceOptions {
  /** How to wait for readiness: gRPC health Check (default), GET /healthz on the metrics address, or not at all. */
  readiness?: Readiness;
  /** gRPC health service name to check (default "": the service's readiness, what /readyz says; "liveness" answers as soon as the gRPC server listens). */
  healthService?: string;
  timeoutMs?: number;
  /** Script to run instead of services/<name>/dist/main.js (absolute or relative to the repo root). */
  entry?: string;
  args?: string[];
  /** Log file name (default <name>.log, or <name>-2.log ... when taken). */
  logName?: string;
}

export interface ExitInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface ServiceHandle {
  name: string;
  /** The environment the service runs with (base + yours + assigned listen addresses). */
  env: Record<string, string>;
  /** TERN_GRPC_LISTEN, "127.0.0.1:<port>" (assigned when not given). */
  grpcAddr: string;
  /** TERN_METRICS_LISTEN, "127.0.0.1:<port>" (assigned when not given). */
  metricsAddr: string;
  logFile: string;
  readonly pid: number | undefined;
  readonly running: boolean;
  /** Resolves when the current process exits. */
  readonly exited: Promise<ExitInfo>;
  /** SIGTERM, then wait (SIGKILL after `graceMs`, default 20 s). */
  stop(graceMs?: number): Promise<ExitInfo>;
  /** SIGKILL, wait for the exit. */
  kill(): Promise<ExitInfo>;
  /** Start again with the same environment (and addresses), after stopping it if it runs; `env` overrides. */
  restart(env?: Record<string, string>): Promise<void>;
  /** Sends a signal without waiting. */
  signal(sig: NodeJS.Signals): void;
  /** The log so far. */
  log(): string;
}

/** The environment every service gets before the caller's: a PATH and a few basics, nothing else from this process. */
export function baseEnv(): Record<string, string> {
  const env: Record<string, string> = {
    PATH: process.env.PATH ?? '/usr/local/bin:/usr/bin:/bin',
    HOME: process.env.HOME ?? os.tmpdir(),
    TMPDIR: process.env.TMPDIR ?? os.tmpdir(),
    LANG: 'C.UTF-8',
    TZ: 'UTC',
    NODE_ENV: 'test',
    NODE_OPTIONS: '--enable-source-maps',
    TERN_LOG_LEVEL: 'debug',
    TERN_SHUTDOWN_GRACE_MS: '10000',
  };
  return env;
}

/** One gRPC health Check: the status name (SERVING, NOT_SERVING, ...) or throws. */
export function grpcHealthCheck(addr: string, service = '', timeoutMs = 1000): Promise<string> {
  const STATUS = ['UNKNOWN', 'SERVING', 'NOT_SERVING', 'SERVICE_UNKNOWN'];
  // HealthCheckRequest { string service = 1; }
  const svc = Buffer.from(service, 'utf8');
  const req = svc.length ? Buffer.concat([Buffer.from([0x0a, svc.length]), svc]) : Buffer.alloc(0);
  const client = new grpc.Client(addr, grpc.credentials.createInsecure());
  return new Promise<string>((resolve, reject) => {
    client.makeUnaryRequest<Buffer, Buffer>(
      '/grpc.health.v1.Health/Check',
      (b) => b,
      (b) => b,
      req,
      { deadline: Date.now() + timeoutMs },
      (err, res) => {
        client.close();
        if (err) return reject(err);
        // HealthCheckResponse { ServingStatus status = 1; }
        let status = 0;
        if (res && res.length >= 2 && res[0] === 0x08) status = res[1]!;
        resolve(STATUS[status] ?? String(status));
      },
    );
  });
}

/** GET http://<addr>/healthz: the HTTP status code, or throws. */
export function httpHealthCheck(addr: string, timeoutMs = 1000): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    const req = http.get(`http://${addr}/healthz`, { timeout: timeoutMs }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
  });
}

function loopbackAddr(listen: string): string {
  // 0.0.0.0:7003 / [::]:7003 -> a connectable address.
  const m = /^(?:\[(.*)\]|(.*)):(\d+)$/.exec(listen);
  if (!m) return listen;
  const host = m[1] ?? m[2] ?? '';
  const port = m[3];
  if (host === '0.0.0.0' || host === '') return `127.0.0.1:${port}`;
  if (host === '::') return `[::1]:${port}`;
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

interface ServiceContext {
  logDir: string;
  usedLogNames: Set<string>;
}

async function startServiceIn(ctx: ServiceContext, name: string, env: Record<string, string | undefined>, opts: StartServiceOptions = {}): Promise<ServiceHandle> {
  const root = repoRoot();
  const entry = opts.entry ? path.resolve(root, opts.entry) : path.join(root, 'services', name, 'dist', 'main.js');
  if (!fs.existsSync(entry)) throw new Error(`@tern/devkit: ${path.relative(root, entry)} is missing; build first (npm run build)`);
  const merged: Record<string, string> = { ...baseEnv(), OTEL_SERVICE_NAME: `tern-${name}` };
  for (const [k, v] of Object.entries(env)) {
    if (v === undefined) delete merged[k];
    else merged[k] = v;
  }
  merged.TERN_GRPC_LISTEN ??= `127.0.0.1:${await freePort()}`;
  merged.TERN_METRICS_LISTEN ??= `127.0.0.1:${await freePort()}`;

  let logName = opts.logName ?? `${name}.log`;
  for (let i = 2; !opts.logName && ctx.usedLogNames.has(logName); i++) logName = `${name}-${i}.log`;
  ctx.usedLogNames.add(logName);
  fs.mkdirSync(ctx.logDir, { recursive: true });
  const logFile = path.join(ctx.logDir, logName);
  fs.writeFileSync(logFile, '');

  const readiness = opts.readiness ?? 'grpc';
  const timeoutMs = opts.timeoutMs ?? 30_000;
  let child: ChildProcess | undefined;
  let exited: Promise<ExitInfo> = Promise.resolve({ code: null, signal: null });
  let expectExit = false;

  const handle: ServiceHandle = {
    name,
    env: merged,
    grpcAddr: loopbackAddr(merged.TERN_GRPC_LISTEN),
    metricsAddr: loopbackAddr(merged.TERN_METRICS_LISTEN),
    logFile,
    get pid() {
      return child?.pid;
    },
    get running() {
      return !!child && child.exitCode === null && child.signalCode === null;
    },
    get exited() {
      return exited;
    },
    async stop(graceMs = 20_000) {
      const c = child;
      if (!c || c.exitCode !== null || c.signalCode !== null) return exited;
      expectExit = true;
      c.kill('SIGTERM');
      const t = setTimeout(() => c.kill('SIGKILL'), graceMs);
      const info = await exited;
      clearTimeout(t);
      return info;
    },
    async kill() {
      const c = child;
      if (!c || c.exitCode !== null || c.signalCode !== null) return exited;
      expectExit = true;
      c.kill('SIGKILL');
      return exited;
    },
    async restart(overrides?: Record<string, string>) {
      await handle.stop();
      if (overrides) Object.assign(merged, overrides);
      await launch();
    },
    signal(sig) {
      child?.kill(sig);
    },
    log: () => {
      try {
        return fs.readFileSync(logFile, 'utf8');
      } catch {
        return '';
      }
    },
  };

  const launch = async (): Promise<void> => {
    expectExit = false;
    const fd = fs.openSync(logFile, 'a');
    fs.writeSync(fd, `--- devkit: starting ${name} (${path.relative(root, entry)}) at ${new Date().toISOString()}; gRPC ${handle.grpcAddr}, metrics ${handle.metricsAddr}\n`);
    const c = spawn(nodeBinary(), [...SERVICE_NODE_FLAGS, entry, ...(opts.args ?? [])], { cwd: root, env: merged, stdio: ['ignore', fd, fd] });
    fs.closeSync(fd);
    child = c;
    trackChild(c);
    exited = new Promise<ExitInfo>((resolve) => {
      c.once('exit', (code, signal) => {
        try {
          fs.appendFileSync(logFile, `--- devkit: ${name} exited (code ${code}, signal ${signal}) at ${new Date().toISOString()}\n`);
        } catch {
          /* log dir gone */
        }
        if (!expectExit && code !== 0) {
          process.stderr.write(`[devkit] service ${name} (pid ${c.pid}) exited unexpectedly (code ${code}, signal ${signal}); log: ${logFile}\n`);
        }
        resolve({ code, signal });
      });
    });
    if (readiness === 'none') return;
    const deadline = Date.now() + timeoutMs;
    let last = '';
    while (Date.now() < deadline) {
      if (c.exitCode !== null || c.signalCode !== null) {
        throw new Error(`service ${name} exited (code ${c.exitCode}, signal ${c.signalCode}) before it was ready; log: ${logFile}\n${tail(logFile)}`);
      }
      try {
        if (readiness === 'grpc') {
          const s = await grpcHealthCheck(handle.grpcAddr, opts.healthService ?? '', 1000);
          if (s === 'SERVING') return;
          last = `health ${s}`;
        } else {
          const code = await httpHealthCheck(handle.metricsAddr, 1000);
          if (code === 200) return;
          last = `/healthz ${code}`;
        }
      } catch (err) {
        last = (err as Error).message;
      }
      await sleep(100);
    }
    c.kill('SIGKILL');
    throw new Error(`service ${name} not ready after ${timeoutMs} ms (${readiness}: ${last}); log: ${logFile}\n${tail(logFile)}`);
  };

  await launch();
  return handle;
}

/** Starts a service outside a Harness (logs under .tern/test-logs/<test>/). */
export function startService(name: string, env: Record<string, string | undefined>, opts: StartServiceOptions = {}): Promise<ServiceHandle> {
  const logDir = path.join(repoRoot(), '.tern', 'test-logs', defaultTestName());
  return startServiceIn({ logDir, usedLogNames: new Set() }, name, env, opts);
}

/**
 * Runs a one-shot Node script (path relative to the repo root) with the base
 * environment plus `env`, output appended to `logFile`; resolves on exit 0,
 * rejects with the log's tail otherwise.
 */
export async function runNodeScript(entry: string, env: Record<string, string>, opts: { logFile: string; timeoutMs?: number }): Promise<void> {
  const { logFile } = opts;
  const timeoutMs = opts.timeoutMs ?? 60_000;
  const root = repoRoot();
  const script = path.resolve(root, entry);
  if (!fs.existsSync(script)) throw new Error(`@tern/devkit: ${path.relative(root, script)} is missing; build first (npm run build)`);
  fs.mkdirSync(path.dirname(logFile), { recursive: true });
  const fd = fs.openSync(logFile, 'a');
  fs.writeSync(fd, `--- devkit: running ${path.relative(root, script)} at ${new Date().toISOString()}\n`);
  const c = spawn(nodeBinary(), [script], { cwd: root, env: { ...baseEnv(), ...env }, stdio: ['ignore', fd, fd] });
  fs.closeSync(fd);
  trackChild(c);
  const timer = setTimeout(() => c.kill('SIGKILL'), timeoutMs);
  const [code, signal] = (await new Promise((resolve) => c.once('exit', (cd, sg) => resolve([cd, sg])))) as [number | null, string | null];
  clearTimeout(timer);
  if (code !== 0) {
    throw new Error(`${path.relative(root, script)} failed (code ${code}, signal ${signal}); log: ${logFile}\n${tail(logFile)}`);
  }
}

// ---------------------------------------------------------------- Harness

export interface HarnessOptions {
  /** Names the log directory .tern/test-logs/<name>/; default: the test file's name. */
  name?: string;
}

const cleanedLogDirs = new Set<string>();

export class Harness {
  readonly name: string;
  readonly logDir: string;
  private readonly cleanups: { label: string; fn: () => unknown }[] = [];
  private readonly ctx: ServiceContext;
  private closed = false;

  constructor(opts: HarnessOptions = {}) {
    this.name = sanitize(opts.name ?? defaultTestName());
    this.logDir = path.join(repoRoot(), '.tern', 'test-logs', this.name);
    // Logs of an earlier run go; a second Harness in the same process shares the directory.
    if (!cleanedLogDirs.has(this.logDir)) {
      cleanedLogDirs.add(this.logDir);
      fs.rmSync(this.logDir, { recursive: true, force: true });
    }
    fs.mkdirSync(this.logDir, { recursive: true });
    this.ctx = { logDir: this.logDir, usedLogNames: new Set() };
  }

  /** Registers a cleanup; close() runs them last-registered first. */
  defer(fn: () => unknown, label = 'cleanup'): void {
    this.cleanups.push({ label, fn });
  }

  async createTestDatabase(opts: { prefix?: string } = {}): Promise<TestDatabase> {
    const db = await createTestDatabase({ prefix: opts.prefix ?? `tern_${this.name}` });
    this.defer(() => db.drop(), `drop database ${db.name}`);
    return db;
  }

  async startNats(opts: { port?: number } = {}): Promise<NatsServerHandle> {
    let n = 1;
    while (fs.existsSync(path.join(this.logDir, n === 1 ? 'nats.log' : `nats-${n}.log`))) n++;
    const logFile = path.join(this.logDir, n === 1 ? 'nats.log' : `nats-${n}.log`);
    const nats = await startNats({ port: opts.port, logFile });
    this.defer(() => nats.close(), `stop nats ${nats.url}`);
    return nats;
  }

  async startService(name: string, env: Record<string, string | undefined>, opts: StartServiceOptions = {}): Promise<ServiceHandle> {
    const svc = await startServiceIn(this.ctx, name, env, opts);
    this.defer(async () => {
      const info = await svc.stop();
      if (info.code !== 0 && info.code !== null) process.stderr.write(`[devkit] ${name} exited with code ${info.code}; log: ${svc.logFile}\n`);
    }, `stop ${name}`);
    return svc;
  }

  /** Runs the migrations (libs/db/dist/migrate.js unless `entry` says otherwise) against `dbUrl`. */
  async runMigrate(dbUrl: string, opts: { entry?: string; env?: Record<string, string>; timeoutMs?: number } = {}): Promise<void> {
    await runNodeScript(opts.entry ?? 'libs/db/dist/migrate.js', { ...opts.env, TERN_DATABASE_URL: dbUrl }, {
      logFile: path.join(this.logDir, 'migrate.log'),
      timeoutMs: opts.timeoutMs,
    });
  }

  async startDns(opts: DnsServerOptions = {}): Promise<DnsServer> {
    const dns = await new DnsServer(opts).start();
    this.defer(() => dns.close(), `close dns ${dns.address}`);
    return dns;
  }

  async startSink(opts: SmtpSinkOptions = {}): Promise<SmtpSink> {
    const sink = await new SmtpSink(opts).start();
    this.defer(() => sink.close(), `close sink ${sink.address}`);
    return sink;
  }

  async startOtlp(opts: OtlpReceiverOptions = {}): Promise<OtlpReceiver> {
    const otlp = await new OtlpReceiver(opts).start();
    this.defer(() => otlp.close(), `close otlp ${otlp.endpoint}`);
    return otlp;
  }

  freePort(host?: string): Promise<number> {
    return freePort(host);
  }

  /** Runs every cleanup (last first), even when some fail; then throws an AggregateError if any did. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const errors: Error[] = [];
    for (const { label, fn } of this.cleanups.reverse()) {
      try {
        await fn();
      } catch (err) {
        errors.push(new Error(`${label}: ${(err as Error).message}`));
      }
    }
    this.cleanups.length = 0;
    if (errors.length) throw new AggregateError(errors, `Harness cleanup failed: ${errors.map((e) => e.message).join('; ')}`);
  }
}

/** runMigrate outside a Harness. */
export function runMigrate(dbUrl: string, opts: { entry?: string; logFile?: string; timeoutMs?: number } = {}): Promise<void> {
  const logFile = opts.logFile ?? path.join(repoRoot(), '.tern', 'test-logs', defaultTestName(), 'migrate.log');
  return runNodeScript(opts.entry ?? 'libs/db/dist/migrate.js', { TERN_DATABASE_URL: dbUrl }, { logFile, timeoutMs: opts.timeoutMs });
}
