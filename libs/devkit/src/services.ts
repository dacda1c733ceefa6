// The services as child processes, the way pods run them: each from its
// dist/main.js with the base environment plus the caller's, listen
// addresses assigned, log to a file, started when its health answers; and
// one-shot Node scripts (migrate).
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { tail, trackChild } from './children';
import { defaultTestName, nodeBinary, repoRoot, SERVICE_NODE_FLAGS, sleep } from './paths';
import { freePort } from './ports';

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

export interface ServiceContext {
  logDir: string;
  usedLogNames: Set<string>;
}

export async function startServiceIn(ctx: ServiceContext, name: string, env: Record<string, string | undefined>, opts: StartServiceOptions = {}): Promise<ServiceHandle> {
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
