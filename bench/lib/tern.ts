// The Tern platform as the bench runs it: every service its own process
// (node services/<name>/dist/main.js, one replica each), a private Postgres
// (initdb in the run's temp dir, default durability: fsync, synchronous
// commit), a private nats-server -js, and a DNS server that gives sink.test
// an MX pointing at the sink. Listeners are on 127.0.0.30 with free ports, so
// nothing collides with a platform started by `npm start` or the tests.
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import pg from 'pg';
import { start, stopProcess, type Root } from './procs';
import { freePort, log, run, runOk, sleep, waitTcp } from './util';
import { SERVICE_NODE_FLAGS, natsServerBinary } from '@tern/devkit';
import { startDns, type BenchDns } from './dns';
import type { Mta, MtaStartOptions } from './mta';

export const TERN_HOST = '127.0.0.30';
const SERVICES = ['policy', 'queue', 'ingress', 'delivery', 'bounce', 'admin'] as const;
type Service = (typeof SERVICES)[number];
/** services a message passes through; the others are started when built */

function pgBin(name: string): string {
  const base = '/usr/lib/postgresql';
  const versions = fs.existsSync(base) ? fs.readdirSync(base).sort((a, b) => Number(b) - Number(a)) : [];
  for (const v of versions) {
    const p = path.join(base, v, 'bin', name);
    if (fs.existsSync(p)) return p;
  }
  throw new Error(`Postgres ${name} not found under ${base} (scripts/provision.sh installs it)`);
}

function uidOf(user: string): { uid: number; gid: number } {
  for (const line of fs.readFileSync('/etc/passwd', 'utf8').split('\n')) {
    const f = line.split(':');
    if (f[0] === user) return { uid: Number(f[2]), gid: Number(f[3]) };
  }
  throw new Error(`no user ${user}`);
}

export class TernMta implements Mta {
  readonly name = 'tern';
  readonly host = TERN_HOST;
  port = 0;
  private dir = '';
  private pgProc?: ReturnType<typeof start>;
  private natsProc?: ReturnType<typeof start>;
  private procs = new Map<Service, ReturnType<typeof start>>();
  private dns?: BenchDns;
  private db?: pg.Client;
  private dbUrl = '';
  started: Service[] = [];
  constructor(private repo: string) {
    const missing = SERVICES.filter((s) => !fs.existsSync(this.bundle(s)));
    if (missing.length) throw new Error(`tern: not built: ${missing.map((s) => `services/${s}/dist/main.js`).join(', ')} (scripts/bench.sh builds them)`);
  }

  private bundle(s: Service): string {
    return path.join(this.repo, 'services', s, 'dist', 'main.js');
  }

  async start(o: MtaStartOptions): Promise<void> {
    this.dir = path.join(o.workDir, 'tern');
    fs.rmSync(this.dir, { recursive: true, force: true });
    fs.mkdirSync(this.dir, { recursive: true });
    fs.chmodSync(this.dir, 0o755);

    // Postgres
    const pgData = path.join(this.dir, 'pg');
    const pgSock = path.join(this.dir, 'pgsock');
    fs.mkdirSync(pgData);
    fs.mkdirSync(pgSock);
    const pgUser = uidOf('postgres');
    fs.chownSync(pgData, pgUser.uid, pgUser.gid);
    fs.chownSync(pgSock, pgUser.uid, pgUser.gid);
    await runOk(pgBin('initdb'), ['-D', pgData, '-U', 'postgres', '--auth=trust', '-E', 'UTF8', '--no-instructions'], { uid: pgUser.uid, gid: pgUser.gid, cwd: this.dir });
    const pgPort = await this.startPostgres(o, pgData, pgSock, pgUser);
    const admin = await this.connectPostgres(pgPort, 'postgres', 10_000);
    await admin.query('CREATE DATABASE tern');
    await admin.end();
    this.pgStats = Boolean(o.pgStats);
    this.dbUrl = `postgres://postgres@127.0.0.1:${pgPort}/tern`;

    // NATS
    const natsPort = await freePort(TERN_HOST);
    this.natsProc = start(natsServerBinary(), ['-js', '-a', TERN_HOST, '-p', String(natsPort), '-sd', path.join(this.dir, 'nats')], {
      label: 'nats-server',
      logFile: path.join(this.dir, 'nats.log'),
    });
    await waitTcp(TERN_HOST, natsPort, 15_000);

    // DNS
    const dnsPort = await freePort(TERN_HOST, true);
    this.dns = await startDns(TERN_HOST, dnsPort, 'sink.test', o.sinkHost);

    // Migrations
    const migrate = await run(process.execPath, [path.join(this.repo, 'libs/db/dist/migrate.js')], {
      env: { ...process.env, TERN_DATABASE_URL: this.dbUrl },
      cwd: this.repo,
    });
    if (migrate.code !== 0) throw new Error(`migrate failed: ${migrate.stderr || migrate.stdout}`);

    // Services
    const ports: Record<string, number> = {};
    for (const s of SERVICES) {
      ports[`${s}.grpc`] = await freePort(TERN_HOST);
      ports[`${s}.metrics`] = await freePort(TERN_HOST);
    }
    this.port = await freePort(TERN_HOST);
    const addr = (s: Service): string => `${TERN_HOST}:${ports[`${s}.grpc`]}`;
    const token = crypto.randomBytes(16).toString('hex');
    const common = (s: Service): Record<string, string> => ({
      TERN_GRPC_LISTEN: addr(s),
      TERN_METRICS_LISTEN: `${TERN_HOST}:${ports[`${s}.metrics`]}`,
      TERN_LOG_LEVEL: process.env.TERN_BENCH_LOG_LEVEL ?? 'info',
      TERN_HOSTNAME: 'tern.bench.test',
      TERN_SHUTDOWN_GRACE_MS: '8000',
    });
    const env: Record<Service, Record<string, string>> = {
      policy: {
        TERN_DATABASE_URL: this.dbUrl,
        // Postfix's mynetworks = 127.0.0.0/8: smtp-source may relay.
        TERN_TRUSTED_NETWORKS: '127.0.0.0/8',
        TERN_DNS_SERVERS: this.dns.address,
      },
      queue: { TERN_DATABASE_URL: this.dbUrl, TERN_NATS_URL: `nats://${TERN_HOST}:${natsPort}` },
      ingress: {
        TERN_POLICY_ADDR: addr('policy'),
        TERN_QUEUE_ADDR: addr('queue'),
        TERN_SMTP_LISTEN: `${TERN_HOST}:${this.port}`,
        TERN_SUBMISSION_LISTEN: 'off',
        TERN_SUBMISSIONS_LISTEN: 'off',
        // Postfix exempts mynetworks from its per-client connection limit.
        TERN_MAX_SESSIONS_PER_CLIENT: '1000',
      },
      delivery: {
        TERN_NATS_URL: `nats://${TERN_HOST}:${natsPort}`,
        TERN_QUEUE_ADDR: addr('queue'),
        TERN_DNS_SERVERS: this.dns.address,
        TERN_SMTP_PORT: String(o.sinkPort),
      },
      bounce: { TERN_NATS_URL: `nats://${TERN_HOST}:${natsPort}`, TERN_QUEUE_ADDR: addr('queue') },
      admin: { TERN_QUEUE_ADDR: addr('queue'), TERN_POLICY_ADDR: addr('policy'), TERN_ADMIN_TOKENS: `bench:${token}` },
    };
    const profile = new Set(o.profile ?? []);
    this.started = [];
    for (const s of SERVICES) {
      const nodeArgs: string[] = [...SERVICE_NODE_FLAGS];
      if (profile.has(s) && o.profileDir) {
        fs.mkdirSync(path.join(o.profileDir, s), { recursive: true });
        nodeArgs.push('--cpu-prof', `--cpu-prof-dir=${path.join(o.profileDir, s)}`);
      }
      // Experiments: TERN_BENCH_NODE_ARGS_QUEUE="--trace-gc --max-semi-space-size=32"
      nodeArgs.push(...(process.env[`TERN_BENCH_NODE_ARGS_${s.toUpperCase()}`] ?? '').split(' ').filter(Boolean));
      const extra = process.env[`TERN_BENCH_ENV_${s.toUpperCase()}`]; // e.g. "A=1,B=2", for experiments
      const extraEnv = Object.fromEntries((extra ? extra.split(',') : []).map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]));
      // A port chosen as free may be taken by someone else before the service
      // binds it (the machine is shared): pick new ones and start again. The
      // services that use this one's address start after it, so they see the new one.
      for (let attempt = 1; ; attempt++) {
        const child = start(process.execPath, [...nodeArgs, this.bundle(s)], {
          label: `tern-${s}`,
          cwd: this.repo,
          env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: process.env.HOME ?? '/root', ...common(s), ...env[s], ...extraEnv },
          logFile: path.join(this.dir, `${s}.log`),
        });
        this.procs.set(s, child);
        try {
          await this.waitReady(s, `${TERN_HOST}:${ports[`${s}.metrics`]}`, child);
          break;
        } catch (err) {
          await stopProcess(child, 5000);
          if (attempt >= 3 || !/EADDRINUSE/.test((err as Error).message)) throw err;
          log(`tern: ${s}: a port was taken before it could bind; retrying on new ports`);
          ports[`${s}.grpc`] = await freePort(TERN_HOST);
          ports[`${s}.metrics`] = await freePort(TERN_HOST);
          if (s === 'ingress') this.port = await freePort(TERN_HOST);
        }
      }
      this.started.push(s);
    }
    await waitTcp(TERN_HOST, this.port, 15_000);
    this.db = new pg.Client({ connectionString: this.dbUrl });
    this.db.on('error', () => undefined); // Postgres going away at shutdown
    await this.db.connect();
  }

  /**
   * Starts the private Postgres and waits until it answers queries. A start
   * that fails (the process exits, e.g. its port was taken between freePort
   * and bind, or it does not answer within 60 s on a loaded machine) is
   * retried on another port, and the error names the cause from its log.
   */
  private async startPostgres(o: MtaStartOptions, pgData: string, pgSock: string, pgUser: { uid: number; gid: number }): Promise<number> {
    const logFile = path.join(this.dir, 'postgres.log');
    for (let attempt = 1; ; attempt++) {
      const pgPort = await freePort('127.0.0.1');
      const proc = start(
        pgBin('postgres'),
        [
          '-D', pgData, '-p', String(pgPort), '-k', pgSock, '-c', 'listen_addresses=127.0.0.1', '-c', 'max_connections=200',
          ...(o.pgStats ? ['-c', 'shared_preload_libraries=pg_stat_statements', '-c', 'pg_stat_statements.track=all'] : []),
          // Experiments: TERN_BENCH_PG_SETTINGS="default_toast_compression=lz4 work_mem=8MB"
          ...(process.env.TERN_BENCH_PG_SETTINGS ?? '').split(' ').filter(Boolean).flatMap((kv) => ['-c', kv]),
        ],
        {
          label: 'postgres',
          uid: pgUser.uid,
          gid: pgUser.gid,
          cwd: this.dir,
          logFile,
          stop: async () => {
            proc.kill('SIGINT'); // fast shutdown
          },
        },
      );
      this.pgProc = proc;
      try {
        const deadline = Date.now() + 60_000;
        let last = 'no answer';
        for (;;) {
          if (proc.exitCode !== null || proc.signalCode !== null) throw new Error(`postgres exited (${proc.exitCode ?? proc.signalCode})`);
          if (Date.now() > deadline) throw new Error(`postgres did not accept queries within 60 s (${last})`);
          try {
            const c = await this.connectPostgres(pgPort, 'postgres', 3000);
            await c.end().catch(() => undefined);
            return pgPort;
          } catch (err) {
            last = (err as Error).message;
          }
          await sleep(200);
        }
      } catch (err) {
        let tail = '';
        try {
          tail = fs.readFileSync(logFile, 'utf8').trim().split('\n').slice(-6).join(' | ');
        } catch {
          /* no log */
        }
        await stopProcess(proc, 5000);
        const msg = `${(err as Error).message}; postgres.log: ${tail || '(empty)'}`;
        if (attempt >= 3) throw new Error(msg);
        log(`tern: private postgres failed to start (attempt ${attempt}): ${msg}; retrying on another port`);
      }
    }
  }

  /** One connection attempt, bounded (a connect to a port that never answers must not hang). */
  private async connectPostgres(port: number, db: string, timeoutMs: number): Promise<pg.Client> {
    // A pg.Client cannot be reused after a failed connect: a new one per try.
    const c = new pg.Client({ connectionString: `postgres://postgres@127.0.0.1:${port}/${db}`, connectionTimeoutMillis: timeoutMs });
    c.on('error', () => undefined);
    try {
      await c.connect();
      await c.query('SELECT 1');
      return c;
    } catch (err) {
      await c.end().catch(() => undefined);
      throw err;
    }
  }

  private async waitReady(s: Service, metrics: string, child: ReturnType<typeof start>): Promise<void> {
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline) {
      if (child.exitCode !== null) throw new Error(`tern ${s} exited with ${child.exitCode}: ${this.tail(s)}`);
      try {
        const r = await fetch(`http://${metrics}/readyz`, { signal: AbortSignal.timeout(1000) });
        if (r.ok) return;
      } catch {
        /* not yet */
      }
      await sleep(150);
    }
    throw new Error(`tern ${s} not ready within 30 s: ${this.tail(s)}`);
  }

  private tail(s: string): string {
    try {
      return fs.readFileSync(path.join(this.dir, `${s}.log`), 'utf8').trim().split('\n').slice(-5).join('\n');
    } catch {
      return '';
    }
  }

  roots(): Root[] {
    const roots: Root[] = [];
    for (const [s, p] of this.procs) if (p.pid) roots.push({ pid: p.pid, group: 'tern', name: s });
    if (this.pgProc?.pid) roots.push({ pid: this.pgProc.pid, group: 'tern', name: 'postgres', namer: () => 'postgres', reaps: true });
    if (this.natsProc?.pid) roots.push({ pid: this.natsProc.pid, group: 'tern', name: 'nats' });
    return roots;
  }

  async queued(): Promise<number> {
    const r = await this.db!.query<{ n: string }>('SELECT count(*) AS n FROM queue.recipients WHERE state IN (1, 2, 3)');
    return Number(r.rows[0]!.n);
  }

  queueIdOf(): string | undefined {
    return undefined; // ingress's Received names the session, not the queue id
  }

  /** Queue id by the Message-Id in the stored body (first chunk). */
  async resolveByMessageId(messageIds: string[]): Promise<Map<string, string>> {
    const want = new Set(messageIds);
    const out = new Map<string, string>();
    const r = await this.db!.query<{ id: string; mid: string | null }>(
      `SELECT message_id AS id,
              substring(convert_from(substring(data from 1 for 8192), 'LATIN1') from '(?i)\\nmessage-id:\\s*<([^>\\r\\n]+)>') AS mid
         FROM queue.body_chunks WHERE seq = 0`,
    );
    for (const row of r.rows) if (row.mid && want.has(row.mid)) out.set(row.mid, row.id);
    return out;
  }

  /** created_at (in the enqueue transaction) to the end of the successful attempt. */
  async serverLatencies(): Promise<Map<string, number>> {
    const out = new Map<string, number>();
    const r = await this.db!.query<{ id: string; ms: number }>(
      `SELECT m.id, EXTRACT(EPOCH FROM (a.started_at - m.created_at)) * 1000 + a.duration_ms AS ms
         FROM queue.messages m JOIN queue.attempts a ON a.message_id = m.id
        WHERE a.code BETWEEN 200 AND 299`,
    );
    for (const row of r.rows) out.set(row.id, Number(row.ms));
    return out;
  }

  private pgStats = false;
  private walAtStart = '';

  async windowStart(): Promise<void> {
    if (!this.pgStats || !this.db) return;
    await this.db.query('CREATE EXTENSION IF NOT EXISTS pg_stat_statements');
    await this.db.query('SELECT pg_stat_statements_reset()');
    this.walAtStart = (await this.db.query<{ lsn: string }>('SELECT pg_current_wal_lsn()::text AS lsn')).rows[0]!.lsn;
  }

  /** Statements run per message in the measured window, heaviest first. */
  async windowReport(messages: number): Promise<string> {
    if (!this.pgStats || !this.db) return '';
    const r = await this.db.query<{ calls: string; total: number; mean: number; rows: string; query: string }>(
      `SELECT calls, total_exec_time AS total, mean_exec_time AS mean, rows, regexp_replace(query, '\\s+', ' ', 'g') AS query
         FROM pg_stat_statements WHERE query NOT LIKE '%pg_stat_statements%' ORDER BY total_exec_time DESC LIMIT 25`,
    );
    const all = await this.db.query<{ calls: string; total: number }>(
      `SELECT sum(calls) AS calls, sum(total_exec_time) AS total FROM pg_stat_statements WHERE query NOT LIKE '%pg_stat_statements%'`,
    );
    // WAL written in the window: what the durable queue costs the disk, whatever the machine's speed.
    const wal = await this.db.query<{ bytes: string }>('SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)::bigint AS bytes', [this.walAtStart]);
    const n = Math.max(1, messages);
    const lines = [
      `postgres statements: ${(Number(all.rows[0]!.calls) / n).toFixed(1)} per message, ${(all.rows[0]!.total / n).toFixed(2)} ms execution per message, ${(Number(wal.rows[0]!.bytes) / n / 1024).toFixed(1)} KiB WAL per message`,
      '   calls/msg  ms/msg  mean ms  rows/call  statement',
    ];
    for (const row of r.rows) {
      const calls = Number(row.calls);
      lines.push(
        `   ${(calls / n).toFixed(2).padStart(9)} ${(row.total / n).toFixed(3).padStart(7)} ${row.mean.toFixed(3).padStart(8)} ${(Number(row.rows) / Math.max(1, calls)).toFixed(1).padStart(10)}  ${row.query.slice(0, 150)}`,
      );
    }
    return lines.join('\n');
  }

  logTail(): string {
    return this.started.map((s) => `${s}: ${this.tail(s).split('\n').slice(-2).join(' | ')}`).join('\n');
  }

  async stop(): Promise<void> {
    await this.db?.end().catch(() => undefined);
    this.db = undefined;
    // Reverse order: ingress stops taking mail first, the stores last.
    const order: Service[] = ['ingress', 'admin', 'bounce', 'delivery', 'queue', 'policy'];
    for (const s of order) {
      const p = this.procs.get(s);
      if (p) await stopProcess(p, 12_000);
    }
    this.procs.clear();
    await this.dns?.stop().catch(() => undefined);
    if (this.natsProc) await stopProcess(this.natsProc, 5000);
    if (this.pgProc) await stopProcess(this.pgProc, 10_000);
  }
}
