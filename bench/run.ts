// `npm run bench`: Tern against Postfix, same load, same sink, same machine.
//
//   node_modules/.bin/node --import tsx bench/run.ts [options]
//
//   --quick               short smoke run (300 messages per scenario)
//   --messages N          messages per scenario (default 3000)
//   --warmup N            messages sent and delivered before measuring (default 10% up to 300)
//   --only tern|postfix   run one side only
//   --scenario LIST       comma-separated subset of 4k-10,4k-50,64k-10,64k-50
//   --soak                memory soak: 100000 messages (or --messages), 4 KiB, 10 sessions,
//                         peak RSS per process printed every --interval seconds (default 10)
//   --no-latency          no per-message latency (smtp-source without -v, sink without dump)
//   --reuse               smtp-source -d: several messages per connection
//   --profile SVC[,SVC]   run these Tern services under node --cpu-prof and summarize
//   --repeat N            run each scenario N times per side (alternating) and report the
//                         median run by end-to-end rate, with the range (default 1)
//   --pg-stats            Tern: pg_stat_statements in the private Postgres; prints the
//                         statements per message of the measured window
//   --keep                keep the work directory (configs, logs, profiles)
//   --timeout S           bound on one run's end-to-end wait (default 60 + messages/20)
//
// See docs/performance.md for the method and the figures.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { execFileSync } from 'node:child_process';
import { cleanupAll, killAllSync, reapStale, Sampler, setPidFile, type ProcReport } from './lib/procs';
import { Sink, SMTP_SINK } from './lib/sink';
import { runSource, SMTP_SOURCE, type SourceResult } from './lib/source';
import { PostfixMta } from './lib/postfix';
import { TernMta } from './lib/tern';
import type { Mta } from './lib/mta';
import { medianRuns, table, type LatencyStats, type RunResult } from './lib/report';
import { freePort, log, percentile, sleep } from './lib/util';
import { summarizeProfiles } from './profile';
import { natsServerBinary } from '@tern/devkit';

const REPO = path.resolve(__dirname, '..');
const OUT_DIR = path.join(REPO, '.tern', 'bench');
const SINK_HOST = '127.0.0.10';

interface Scenario {
  name: string;
  size: number;
  sessions: number;
}

const SCENARIOS: Scenario[] = [
  { name: '4k-10', size: 4096, sessions: 10 },
  { name: '4k-50', size: 4096, sessions: 50 },
  { name: '64k-10', size: 65536, sessions: 10 },
  { name: '64k-50', size: 65536, sessions: 50 },
];

const { values: args } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    messages: { type: 'string' },
    warmup: { type: 'string' },
    only: { type: 'string' },
    scenario: { type: 'string' },
    soak: { type: 'boolean', default: false },
    interval: { type: 'string', default: '10' },
    'no-latency': { type: 'boolean', default: false },
    reuse: { type: 'boolean', default: false },
    profile: { type: 'string' },
    keep: { type: 'boolean', default: false },
    'pg-stats': { type: 'boolean', default: false },
    repeat: { type: 'string', default: '1' },
    timeout: { type: 'string' },
    help: { type: 'boolean', short: 'h', default: false },
  },
  strict: true,
});

if (args.help) {
  const src = fs.readFileSync(__filename, 'utf8');
  process.stdout.write(src.split('\n').filter((l) => l.startsWith('//')).map((l) => l.slice(3)).join('\n') + '\n');
  process.exit(0);
}

function fail(msg: string): never {
  process.stderr.write(`bench: ${msg}\n`);
  process.exit(2);
}

const soak = args.soak;
const messages = args.messages ? Number(args.messages) : soak ? 100_000 : args.quick ? 300 : 3000;
if (!Number.isInteger(messages) || messages < 1) fail('--messages must be a positive integer');
const warmup = args.warmup !== undefined ? Number(args.warmup) : Math.min(300, Math.ceil(messages / 10));
const latencyOn = !args['no-latency'] && !soak;
const only = args.only;
if (only && only !== 'tern' && only !== 'postfix') fail('--only must be tern or postfix');
let scenarios = soak ? [SCENARIOS[0]!] : SCENARIOS;
if (args.scenario) {
  const want = args.scenario.split(',');
  scenarios = SCENARIOS.filter((s) => want.includes(s.name));
  if (!scenarios.length) fail(`--scenario: none of ${want.join(',')} is one of ${SCENARIOS.map((s) => s.name).join(',')}`);
}
const profile = args.profile ? args.profile.split(',') : [];
const timeoutMs = (args.timeout ? Number(args.timeout) : 60 + messages / 20) * 1000;
const intervalMs = Number(args.interval) * 1000;
const repeat = Number(args.repeat);
if (!Number.isInteger(repeat) || repeat < 1) fail('--repeat must be a positive integer');

for (const bin of [SMTP_SOURCE, SMTP_SINK, '/usr/sbin/postfix']) {
  if (!fs.existsSync(bin)) fail(`${bin} is missing: install Postfix (scripts/bench.sh does it)`);
}

// ------------------------------------------------------------------ cleanup

let cleaning = false;
let workDirToRemove: string | undefined;
const tmpDirs = new Set<string>();
async function shutdown(code: number): Promise<never> {
  if (!cleaning) {
    cleaning = true;
    await cleanupAll().catch(() => undefined);
    if (workDirToRemove && !args.keep) fs.rmSync(workDirToRemove, { recursive: true, force: true });
    for (const d of tmpDirs) fs.rmSync(d, { recursive: true, force: true });
  }
  process.exit(code);
}
process.on('SIGINT', () => {
  log('interrupted; stopping everything the bench started');
  void shutdown(130);
});
process.on('SIGTERM', () => void shutdown(143));
process.on('exit', () => killAllSync());
process.on('uncaughtException', (err) => {
  process.stderr.write(`bench: ${err.stack ?? err.message}\n`);
  void shutdown(1);
});
process.on('unhandledRejection', (err) => {
  process.stderr.write(`bench: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  void shutdown(1);
});

// ------------------------------------------------------------------ one run

function stats(method: string, values: number[]): LatencyStats | undefined {
  if (!values.length) return undefined;
  const s = [...values].sort((a, b) => a - b);
  return {
    method,
    n: s.length,
    p50: percentile(s, 50),
    p90: percentile(s, 90),
    p99: percentile(s, 99),
    max: s[s.length - 1]!,
    mean: s.reduce((a, b) => a + b, 0) / s.length,
  };
}

async function waitDrained(mta: Mta, sink: Sink, base: number, want: number, deadline: number, onTick?: () => void): Promise<number | undefined> {
  while (Date.now() < deadline) {
    onTick?.();
    if (sink.messages - base >= want) {
      if ((await mta.queued()) === 0) return performance.timeOrigin + performance.now();
      await sleep(20);
    } else {
      await sleep(5);
    }
  }
  return undefined;
}

async function runOne(mta: Mta, sc: Scenario, workDir: string, n: number): Promise<RunResult> {
  const res: RunResult = {
    mta: mta.name,
    scenario: sc.name,
    size: sc.size,
    sessions: sc.sessions,
    messages: n,
    ok: false,
    accepted: 0,
    refused: 0,
    refusals: {},
    delivered: 0,
    acceptSeconds: NaN,
    e2eSeconds: NaN,
    acceptRate: NaN,
    e2eRate: NaN,
    unmatched: 0,
    cpuPer1000: NaN,
    cpuPer1000ByProcess: {},
    peakRssMb: {},
    processes: [],
    load: [],
    harnessCpuSeconds: 0,
  };
  const dumpDir = latencyOn ? fs.mkdtempSync('/dev/shm/tern-bench-sink-') : undefined;
  if (dumpDir) tmpDirs.add(dumpDir);
  const sink = new Sink(SINK_HOST, await freePort(SINK_HOST), dumpDir);
  const sampler = new Sampler(200);
  let rssTimer: NodeJS.Timeout | undefined;
  try {
    await sink.start();
    log(`${mta.name} ${sc.name}: starting (sink ${sink.host}:${sink.port})`);
    await mta.start({ workDir, sinkHost: sink.host, sinkPort: sink.port, profile, profileDir: path.join(workDir, 'profiles'), pgStats: args['pg-stats'] });
    for (const r of mta.roots()) sampler.addRoot(r);
    sampler.addRoot({ pid: sink.child!.pid!, group: 'load', name: 'smtp-sink' });

    if (warmup > 0) {
      log(`${mta.name} ${sc.name}: warm-up, ${warmup} messages`);
      // Verbose, so that a refusal (smtp-source -A goes on after one) is seen and named instead of a drain that never comes.
      const w = await runSource({ host: mta.host, port: mta.port, sessions: sc.sessions, messages: warmup, size: sc.size, verbose: true, reuse: args.reuse, timeoutMs: 120_000 });
      if (w.exitCode !== 0 || w.refused > 0) {
        const refusals = Object.entries(w.refusals).map(([reply, count]) => `${count} x "${reply}"`).join(', ');
        throw new Error(`warm-up refused: smtp-source exit ${w.exitCode}, ${w.refused} refusals (${refusals || 'none'}) ${w.stderrTail}; ${mta.logTail()}`);
      }
      const ok = await waitDrained(mta, sink, 0, warmup, Date.now() + 120_000);
      if (ok === undefined) throw new Error(`warm-up did not drain: sink has ${sink.messages} of ${warmup}, ${await mta.queued()} queued; ${mta.logTail()}`);
      sink.collect(true);
    }
    const base = sink.messages;

    log(`${mta.name} ${sc.name}: ${n} messages of ${sc.size} bytes over ${sc.sessions} sessions`);
    await mta.windowStart?.();
    const cpu0 = process.cpuUsage();
    sampler.begin();
    if (soak) {
      rssTimer = setInterval(() => {
        const snap = sampler.snapshotRss();
        const line = Object.entries(snap)
          .filter(([k]) => !k.startsWith('load/'))
          .sort((a, b) => a[0].localeCompare(b[0]))
          .map(([k, v]) => `${k.slice(k.indexOf('/') + 1)}=${v.rss}/${v.peak}`)
          .join(' ');
        log(`soak ${mta.name}: delivered ${sink.messages - base}/${n}; RSS/peak MB ${line}`);
        sink.collect(false);
      }, intervalMs);
    }
    const src: SourceResult = await runSource({
      host: mta.host,
      port: mta.port,
      sessions: sc.sessions,
      messages: n,
      size: sc.size,
      verbose: latencyOn,
      reuse: args.reuse,
      timeoutMs,
      onStart: (pid) => sampler.addRoot({ pid, group: 'load', name: 'smtp-source' }),
    });
    res.acceptSeconds = src.wallMs / 1000;
    res.refused = src.refused;
    res.refusals = src.refusals;
    const acceptedForWait = latencyOn ? src.accepted : n - src.refused;
    let lastCollect = Date.now();
    const doneAt = await waitDrained(mta, sink, base, acceptedForWait, src.startedAt + timeoutMs, () => {
      if (Date.now() - lastCollect > 5000) {
        lastCollect = Date.now();
        if (soak) sink.collect(false);
      }
    });
    sampler.end();
    if (rssTimer) clearInterval(rssTimer);
    const cpu1 = process.cpuUsage(cpu0);
    res.harnessCpuSeconds = (cpu1.user + cpu1.system) / 1e6;
    res.delivered = sink.messages - base;
    res.accepted = latencyOn ? src.accepted : res.delivered;
    res.acceptRate = res.accepted / res.acceptSeconds;
    if (doneAt === undefined) {
      res.error = `not drained within ${timeoutMs / 1000}s: sink has ${res.delivered} of ${res.accepted}, ${await mta.queued()} still queued; ${src.stderrTail} ${mta.logTail()}`.trim();
    } else {
      res.e2eSeconds = (doneAt - src.startedAt) / 1000;
      res.e2eRate = res.accepted / res.e2eSeconds;
      res.ok = res.accepted > 0;
      if (!res.ok) res.error = `nothing accepted: ${src.stderrTail}`;
    }

    // CPU and memory
    const procs = sampler.report();
    const mine = procs.filter((p) => p.group !== 'load');
    res.processes = mine;
    res.load = procs.filter((p) => p.group === 'load');
    const per = (p: ProcReport): number => (p.cpuSeconds * 1000) / Math.max(1, res.accepted);
    res.cpuPer1000 = mine.reduce((a, p) => a + per(p), 0);
    for (const p of mine) {
      const k = p.group === mta.name ? p.name : `${p.group}/${p.name}`;
      res.cpuPer1000ByProcess[k] = (res.cpuPer1000ByProcess[k] ?? 0) + per(p);
      if (p.name !== '(exited)') res.peakRssMb[k] = Math.max(res.peakRssMb[k] ?? 0, p.peakRssMb);
    }
    if (soak) res.rssTimeline = sampler.timeline();
    if (mta.windowReport) {
      res.dbReport = await mta.windowReport(res.accepted);
      if (res.dbReport) log(`${mta.name} ${sc.name}: ${res.dbReport}`);
    }

    // Latency: client-observed 250 (smtp-source -v) to the sink's receipt (dump file mtime)
    if (latencyOn) {
      const got = sink.collect(true);
      const needResolve: string[] = [];
      const qidOf = new Map<string, string>();
      for (const d of got) {
        const q = mta.queueIdOf(d.receivedIds, d.messageId);
        if (q) qidOf.set(d.messageId, q);
        else needResolve.push(d.messageId);
      }
      if (needResolve.length && mta.resolveByMessageId) {
        for (const [mid, q] of await mta.resolveByMessageId(needResolve)) qidOf.set(mid, q);
      }
      const lat: number[] = [];
      for (const d of got) {
        const q = qidOf.get(d.messageId);
        const acc = q ? src.acceptedAt.get(q) : undefined;
        if (acc === undefined) {
          res.unmatched++;
          continue;
        }
        lat.push(Math.max(0, d.atMs - acc));
      }
      res.latency = stats('client 250 (smtp-source -v) -> sink receipt (dump mtime)', lat);
      const server = [...(await mta.serverLatencies()).entries()].filter(([q]) => src.acceptedAt.has(q)).map(([, ms]) => ms);
      res.serverLatency = stats(mta.name === 'postfix' ? "Postfix's log: delay - delays.a" : 'queue records: created_at -> attempt end', server);
    }
    log(
      `${mta.name} ${sc.name}: accepted ${res.accepted} in ${res.acceptSeconds.toFixed(2)}s (${res.acceptRate.toFixed(0)}/s), ` +
        `end-to-end ${res.e2eSeconds.toFixed(2)}s (${res.e2eRate.toFixed(0)}/s), p50 ${res.latency?.p50.toFixed(0) ?? '-'} ms, p99 ${res.latency?.p99.toFixed(0) ?? '-'} ms, CPU ${res.cpuPer1000.toFixed(2)} s/1000`,
    );
  } catch (err) {
    res.error = (err as Error).message;
    log(`${mta.name} ${sc.name}: FAILED: ${res.error}`);
  } finally {
    if (rssTimer) clearInterval(rssTimer);
    sampler.end();
    await mta.stop().catch((e: Error) => log(`${mta.name}: stop: ${e.message}`));
    await sink.stop();
    if (dumpDir) {
      fs.rmSync(dumpDir, { recursive: true, force: true });
      tmpDirs.delete(dumpDir);
    }
  }
  return res;
}

// ------------------------------------------------------------------ main

function sh(cmd: string, a: string[]): string {
  try {
    return execFileSync(cmd, a, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
  } catch {
    return '';
  }
}

function machine(): Record<string, unknown> {
  return {
    host: os.hostname(),
    cpu: os.cpus()[0]?.model,
    cores: os.cpus().length,
    memoryGb: Math.round(os.totalmem() / 2 ** 30),
    kernel: os.release(),
    node: process.version,
    postfix: sh('postconf', ['-d', '-h', 'mail_version']),
    postgres: sh('bash', ['-c', 'ls -d /usr/lib/postgresql/*/bin/postgres | tail -1 | xargs -I{} {} --version']),
    nats: sh(natsServerBinary(), ['--version']),
    commit: sh('git', ['-C', REPO, 'rev-parse', '--short', 'HEAD']),
    loadavg: os.loadavg(),
  };
}

async function main(): Promise<void> {
  fs.mkdirSync(OUT_DIR, { recursive: true });
  // One pid file per bench run: another run going on at the same time keeps
  // its processes (an A/B of two builds side by side in one machine phase,
  // `--only tern`: Postfix's listener address is fixed); those of a run that
  // died are stopped.
  await reapStale(OUT_DIR);
  setPidFile(path.join(OUT_DIR, `pids.${process.pid}`));
  const workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-bench-'));
  fs.chmodSync(workDir, 0o755);
  workDirToRemove = workDir;
  log(`work dir ${workDir}`);

  const mtas: Array<() => Promise<Mta>> = [];
  if (only !== 'tern') mtas.push(async () => new PostfixMta());
  if (only !== 'postfix') {
    mtas.push(async () => new TernMta(REPO));
  }

  const results: RunResult[] = [];
  const started = new Date();
  for (const sc of scenarios) {
    for (let i = 0; i < repeat; i++) {
      for (const make of mtas) {
        let mta: Mta;
        try {
          mta = await make();
        } catch (err) {
          log(`cannot set up: ${(err as Error).message}`);
          continue;
        }
        const r = await runOne(mta, sc, workDir, messages);
        r.run = i + 1;
        results.push(r);
      }
    }
  }

  const report = table(medianRuns(results));
  process.stdout.write(report + '\n');
  let profiles = '';
  if (profile.length) {
    profiles = summarizeProfiles(path.join(workDir, 'profiles'), 25);
    process.stdout.write('\n' + profiles + '\n');
  }
  const stamp = started.toISOString().replace(/[:.]/g, '-');
  const out = path.join(OUT_DIR, `${stamp}.json`);
  fs.writeFileSync(
    out,
    JSON.stringify({ startedAt: started.toISOString(), machine: machine(), options: { messages, warmup, latency: latencyOn, soak, reuse: args.reuse, scenarios: scenarios.map((s) => s.name), only, profile }, results, profiles }, null, 1) + '\n',
  );
  log(`results: ${path.relative(process.cwd(), out)}`);
  if (args.keep) log(`kept ${workDir}`);
  else fs.rmSync(workDir, { recursive: true, force: true });
  await cleanupAll();
  process.exit(results.every((r) => r.ok) ? 0 : 1);
}

void main();
