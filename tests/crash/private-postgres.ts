// A private Postgres cluster for one test file, so that the test can crash and
// restart it (`pg_ctl -m immediate stop` is what a killed postmaster looks
// like) without touching the machine's shared cluster. initdb and pg_ctl run
// as the `postgres` user (Postgres refuses to run as root), with a data
// directory in a temporary directory, on a free loopback port, trust auth.
//
//   const pg = await startPrivatePostgres({ logFile });
//   after(() => pg.close());
//   ... pg.url  (postgres://tern@127.0.0.1:<port>/postgres)
//   await pg.crash(); await pg.start();
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';
import { freePort } from '@tern/devkit';

const run = promisify(execFile);

export interface PrivatePostgres {
  /** URL of the `postgres` database (superuser `tern`, trust auth). */
  url: string;
  port: number;
  dataDir: string;
  logFile: string;
  /** A URL for another database of this cluster. */
  urlFor(database: string): string;
  /** Creates a database and returns its URL. */
  createDatabase(name: string): Promise<string>;
  /** Starts the cluster (again) and waits until it takes connections. */
  start(): Promise<void>;
  /** Immediate shutdown: no checkpoint, clients cut off; recovery from WAL at the next start. */
  crash(): Promise<void>;
  /** Crash, then start again. */
  restart(): Promise<void>;
  /** Fast shutdown and removal of the data directory. */
  close(): Promise<void>;
}

/** Where the Postgres binaries live (TERN_PG_BIN, else the newest /usr/lib/postgresql/N/bin). */
export function postgresBinDir(): string {
  if (process.env.TERN_PG_BIN) return process.env.TERN_PG_BIN;
  const base = '/usr/lib/postgresql';
  const versions = fs.existsSync(base) ? fs.readdirSync(base).filter((v) => /^\d+$/.test(v)).sort((a, b) => Number(b) - Number(a)) : [];
  for (const v of versions) {
    const dir = path.join(base, v, 'bin');
    if (fs.existsSync(path.join(dir, 'pg_ctl'))) return dir;
  }
  throw new Error('private Postgres: no /usr/lib/postgresql/<version>/bin/pg_ctl (set TERN_PG_BIN)');
}

async function asPostgres(bin: string, args: string[], timeoutMs = 60_000): Promise<string> {
  const cmd = process.getuid?.() === 0 ? 'runuser' : bin;
  const argv = process.getuid?.() === 0 ? ['-u', 'postgres', '--', bin, ...args] : args;
  try {
    const { stdout, stderr } = await run(cmd, argv, { timeout: timeoutMs, cwd: os.tmpdir() });
    return stdout + stderr;
  } catch (err) {
    const e = err as Error & { stdout?: string; stderr?: string };
    throw new Error(`${path.basename(bin)} ${args.join(' ')} failed: ${e.message}\n${e.stdout ?? ''}${e.stderr ?? ''}`, { cause: err });
  }
}

async function postgresIds(): Promise<{ uid: number; gid: number } | undefined> {
  if (process.getuid?.() !== 0) return undefined;
  const uid = Number((await run('id', ['-u', 'postgres'])).stdout.trim());
  const gid = Number((await run('id', ['-g', 'postgres'])).stdout.trim());
  return { uid, gid };
}

export async function startPrivatePostgres(opts: { logFile?: string } = {}): Promise<PrivatePostgres> {
  const bin = postgresBinDir();
  const ids = await postgresIds();
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-pg-'));
  const dataDir = path.join(root, 'data');
  const socketDir = path.join(root, 'sock');
  fs.mkdirSync(dataDir);
  fs.mkdirSync(socketDir);
  // The server writes its log inside its own directory (the postgres user
  // may not reach a checkout under root's home); opts.logFile links to it.
  const logFile = path.join(root, 'postgres.log');
  fs.writeFileSync(logFile, '');
  if (opts.logFile) {
    fs.mkdirSync(path.dirname(opts.logFile), { recursive: true });
    fs.rmSync(opts.logFile, { force: true });
    fs.symlinkSync(logFile, opts.logFile);
  }
  if (ids) {
    for (const p of [root, dataDir, socketDir, logFile]) fs.chownSync(p, ids.uid, ids.gid);
  }
  await asPostgres(path.join(bin, 'initdb'), ['-D', dataDir, '-U', 'tern', '-A', 'trust', '-E', 'UTF8', '--no-locale', '--no-sync']);
  let port = await freePort();
  const url = (db: string) => `postgres://tern@127.0.0.1:${port}/${db}`;

  const start = async () => {
    for (let attempt = 0; ; attempt++) {
      try {
        await asPostgres(path.join(bin, 'pg_ctl'), [
          '-D', dataDir, '-l', logFile, '-w', '-t', '60',
          '-o', `-p ${port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=${socketDir} -c max_connections=200`,
          'start',
        ]);
        break;
      } catch (err) {
        // The free port was taken before the bind: try another (only before the first start).
        if (attempt >= 2 || started) throw err;
        port = await freePort();
      }
    }
    started = true;
    // pg_ctl -w waits for "ready to accept connections"; make sure TCP answers too.
    const deadline = Date.now() + 30_000;
    for (;;) {
      const c = new pg.Client({ connectionString: url('postgres'), connectionTimeoutMillis: 2_000 });
      try {
        await c.connect();
        await c.query('SELECT 1');
        await c.end();
        return;
      } catch (err) {
        await c.end().catch(() => undefined);
        if (Date.now() > deadline) throw err;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  };
  let started = false;
  await start();

  const stop = async (mode: 'immediate' | 'fast') => {
    await asPostgres(path.join(bin, 'pg_ctl'), ['-D', dataDir, '-m', mode, '-w', '-t', '60', 'stop']).catch((err: Error) => {
      if (!/not running|no server running|PID file .* does not exist/i.test(err.message)) throw err;
    });
  };

  return {
    get url() {
      return url('postgres');
    },
    get port() {
      return port;
    },
    dataDir,
    logFile,
    urlFor: url,
    async createDatabase(name: string) {
      const c = new pg.Client({ connectionString: url('postgres') });
      await c.connect();
      try {
        await c.query(`CREATE DATABASE "${name}"`);
      } finally {
        await c.end();
      }
      return url(name);
    },
    start,
    crash: () => stop('immediate'),
    async restart() {
      await stop('immediate');
      await start();
    },
    async close() {
      await stop('fast').catch(() => stop('immediate'));
      if (opts.logFile) {
        // The log outlives the server's directory, for the test's post-mortem.
        fs.rmSync(opts.logFile, { force: true });
        fs.copyFileSync(logFile, opts.logFile);
      }
      fs.rmSync(root, { recursive: true, force: true });
    },
  };
}
