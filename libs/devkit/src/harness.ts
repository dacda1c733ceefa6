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
//
// The pieces are in files of their own: paths.ts, ports.ts, postgres.ts,
// nats.ts, children.ts, services.ts.
import fs from 'node:fs';
import path from 'node:path';
import { DnsServer, type DnsServerOptions } from './dns';
import { startNats, type NatsServerHandle } from './nats';
import { OtlpReceiver, type OtlpReceiverOptions } from './otlp';
import { defaultTestName, repoRoot, sanitize } from './paths';
import { freePort } from './ports';
import { createTestDatabase, type TestDatabase } from './postgres';
import { runNodeScript, startServiceIn, type ServiceContext, type ServiceHandle, type StartServiceOptions } from './services';
import { SmtpSink, type SmtpSinkOptions } from './sink';

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
