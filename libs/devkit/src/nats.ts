// A private nats-server with JetStream for a test: started on a free
// loopback port with a temporary store, stopped, killed and restarted on
// the same port and store.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { trackChild, tail } from './children';
import { repoRoot, sleep } from './paths';
import { freePort } from './ports';

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
