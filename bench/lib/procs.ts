// Child processes the bench starts (and must stop), and per-process CPU and
// memory accounting read from /proc.
//
// Every process the bench spawns is registered here; `cleanupAll` stops them
// (SIGTERM, then SIGKILL after a grace period) and is wired to exit, SIGINT,
// SIGTERM and uncaught errors by run.ts. The pids are also written to a pid
// file so that a bench killed with SIGKILL can have its leftovers stopped by
// the next run (only those pids, and only if they still look like ours).
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { sleep } from './util';

export const CLK_TCK = 100; // getconf CLK_TCK on Linux x86_64/arm64

interface Managed {
  label: string;
  child: ChildProcess;
  stop?: () => Promise<void>; // custom graceful stop (postfix stop, pg_ctl stop)
  exited: Promise<number | null>;
}

const managed = new Set<Managed>();
let pidFile: string | undefined;

export function setPidFile(file: string): void {
  pidFile = file;
}

function writePidFile(): void {
  if (!pidFile) return;
  const lines = [...managed].filter((m) => m.child.pid).map((m) => `${m.child.pid} ${m.label}`);
  try {
    fs.writeFileSync(pidFile, lines.join('\n') + (lines.length ? '\n' : ''));
  } catch {
    /* best effort */
  }
}

/** True while `pid` is a running bench (run.ts), not a reused pid. */
function benchAlive(pid: number): boolean {
  try {
    return /bench\/run\.ts/.test(fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' '));
  } catch {
    return false;
  }
}

/**
 * Stops leftovers of bench runs that died without cleaning up: the pids in
 * `dir`'s pid files (`pids.<bench pid>`; `pids` from older benches) whose
 * bench is gone. A run still going on keeps its processes.
 */
export async function reapStale(dir: string): Promise<void> {
  let names: string[] = [];
  try {
    names = fs.readdirSync(dir).filter((n) => n === 'pids' || /^pids\.\d+$/.test(n));
  } catch {
    return;
  }
  for (const name of names) {
    const owner = Number(name.split('.')[1] ?? 0);
    if (owner && owner !== process.pid && benchAlive(owner)) continue;
    await reapPidFile(path.join(dir, name));
  }
}

async function reapPidFile(file: string): Promise<void> {
  let text = '';
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    return;
  }
  for (const line of text.split('\n')) {
    const pid = Number(line.split(' ')[0]);
    if (!pid) continue;
    // Only processes whose command line still names the bench's temp dirs or tools.
    let cmd = '';
    try {
      cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ');
    } catch {
      continue;
    }
    if (!/tern-bench|smtp-sink|smtp-source|nats-server|postgres|postfix|services\/\w+\/dist\/main\.js/.test(cmd)) continue;
    for (const d of descendants(pid).reverse()) tryKill(d, 'SIGKILL');
    tryKill(pid, 'SIGKILL');
    process.stderr.write(`bench: stopped stale process ${pid} (${cmd.slice(0, 80)})\n`);
  }
  fs.rmSync(file, { force: true });
}

function tryKill(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    /* gone */
  }
}

export interface StartOptions extends SpawnOptions {
  label: string;
  /** file that receives stdout+stderr (default: ignored) */
  logFile?: string;
  stop?: () => Promise<void>;
}

export function start(cmd: string, args: string[], opts: StartOptions): ChildProcess & { label: string; exited: Promise<number | null> } {
  let stdio: SpawnOptions['stdio'] = opts.stdio ?? 'ignore';
  let fd: number | undefined;
  if (opts.logFile) {
    fd = fs.openSync(opts.logFile, 'a');
    stdio = ['ignore', fd, fd];
  }
  const child = spawn(cmd, args, { ...opts, stdio });
  if (fd !== undefined) fs.closeSync(fd);
  const exited = new Promise<number | null>((resolve) => {
    child.once('exit', (code, signal) => resolve(code ?? (signal ? 128 : null)));
    child.once('error', (err) => {
      process.stderr.write(`bench: ${opts.label}: ${err.message}\n`);
      resolve(127);
    });
  });
  const m: Managed = { label: opts.label, child, stop: opts.stop, exited };
  managed.add(m);
  void exited.then(() => {
    managed.delete(m);
    writePidFile();
  });
  writePidFile();
  return Object.assign(child, { label: opts.label, exited });
}

/** Stops one managed process: its own stop hook or SIGTERM, then SIGKILL (with its descendants). */
export async function stopProcess(child: ChildProcess, graceMs = 10_000): Promise<void> {
  const m = [...managed].find((x) => x.child === child);
  if (!m || child.exitCode !== null || child.signalCode !== null) return;
  const pid = child.pid!;
  const tree = descendants(pid);
  if (m.stop) {
    await Promise.race([m.stop().catch(() => undefined), sleep(graceMs)]);
  } else {
    tryKill(pid, 'SIGTERM');
  }
  const done = await Promise.race([m.exited.then(() => true), sleep(graceMs).then(() => false)]);
  if (!done) {
    for (const d of descendants(pid).reverse()) tryKill(d, 'SIGKILL');
    tryKill(pid, 'SIGKILL');
    await Promise.race([m.exited, sleep(2000)]);
  }
  // Children that outlived their parent (postfix daemons after master died).
  for (const d of tree) if (alive(d)) tryKill(d, 'SIGKILL');
}

export async function cleanupAll(): Promise<void> {
  const all = [...managed].reverse();
  await Promise.all(all.map((m) => stopProcess(m.child, 5000)));
}

/** Synchronous last resort for process 'exit'. */
export function killAllSync(): void {
  for (const m of managed) {
    const pid = m.child.pid;
    if (!pid) continue;
    for (const d of descendants(pid).reverse()) tryKill(d, 'SIGKILL');
    tryKill(pid, 'SIGKILL');
  }
  managed.clear();
  // Nothing of this run is left to stop.
  if (pidFile) fs.rmSync(pidFile, { force: true });
}

export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------- /proc

export interface ProcStat {
  pid: number;
  ppid: number;
  comm: string;
  /** utime+stime in ticks */
  cpu: number;
  /** cutime+cstime in ticks (reaped children) */
  ccpu: number;
  startTime: number;
}

export function readStat(pid: number): ProcStat | undefined {
  let s: string;
  try {
    s = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  const open = s.indexOf('(');
  const close = s.lastIndexOf(')');
  const comm = s.slice(open + 1, close);
  const f = s.slice(close + 2).split(' ');
  // f[0] = state (field 3); utime = field 14 -> f[11]
  return {
    pid,
    ppid: Number(f[1]),
    comm,
    cpu: Number(f[11]) + Number(f[12]),
    ccpu: Number(f[13]) + Number(f[14]),
    startTime: Number(f[19]),
  };
}

export function readMem(pid: number): { hwmKb: number; rssKb: number } | undefined {
  let s: string;
  try {
    s = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  } catch {
    return undefined;
  }
  const hwm = /VmHWM:\s+(\d+)/.exec(s);
  const rss = /VmRSS:\s+(\d+)/.exec(s);
  return { hwmKb: hwm ? Number(hwm[1]) : 0, rssKb: rss ? Number(rss[1]) : 0 };
}

function allPids(): number[] {
  return fs
    .readdirSync('/proc')
    .filter((n) => /^\d+$/.test(n))
    .map(Number);
}

function childMap(stats?: Map<number, ProcStat>): Map<number, number[]> {
  const children = new Map<number, number[]>();
  for (const pid of allPids()) {
    const st = readStat(pid);
    if (!st) continue;
    stats?.set(pid, st);
    const list = children.get(st.ppid) ?? [];
    list.push(pid);
    children.set(st.ppid, list);
  }
  return children;
}

export function descendants(root: number, children = childMap()): number[] {
  const out: number[] = [];
  const stack = [...(children.get(root) ?? [])];
  while (stack.length) {
    const p = stack.pop()!;
    out.push(p);
    stack.push(...(children.get(p) ?? []));
  }
  return out;
}

/** How a process is named in the report. */
export type Namer = (pid: number, st: ProcStat) => string;

interface Tracked {
  name: string;
  group: string;
  startTime: number;
  base: number; // cpu ticks when first seen in the window (0 if born in it)
  last: number;
  hwmKb: number;
  rssKb: number;
  dead: boolean;
  rootOf?: string; // a root we track cutime for
  baseC?: number;
  lastC?: number;
}

export interface Root {
  pid: number;
  group: string; // "postfix", "tern", "load", ...
  /** name of the root process itself */
  name: string;
  /** name for descendants; default: comm */
  namer?: Namer;
  /** whether reaped children's cpu (cutime) is accounted to "<group>:exited" */
  reaps?: boolean;
}

export interface ProcReport {
  group: string;
  name: string;
  processes: number;
  cpuSeconds: number;
  peakRssMb: number; // max VmHWM among processes of that name
  sumPeakRssMb: number; // sum of VmHWM over processes of that name alive in the window
}

/**
 * Samples every descendant of the roots every `intervalMs`. CPU per process
 * is last-seen minus first-seen in the window; CPU of children that exited
 * between two samples (and so was never seen, or not seen in full) is
 * recovered from the reaping parent's cutime+cstime and reported as
 * "(exited)" of that group.
 */
export class Sampler {
  private roots: Root[] = [];
  private tracked = new Map<string, Tracked>(); // key pid:starttime
  private timer?: NodeJS.Timeout;
  private windowOpen = false;
  private firstSample = true;
  private rssTimeline: Array<{ t: number; rss: Record<string, { rss: number; peak: number }> }> = [];

  constructor(private intervalMs = 100) {}

  addRoot(r: Root): void {
    this.roots.push(r);
  }

  /** Opens the measurement window: everything alive now is the baseline. */
  begin(): void {
    this.tracked.clear();
    this.windowOpen = true;
    this.firstSample = true;
    this.sample();
    this.firstSample = false;
    this.timer = setInterval(() => this.sample(), this.intervalMs);
    this.timer.unref();
  }

  end(): void {
    this.sample();
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    this.windowOpen = false;
  }

  private sample(): void {
    if (!this.windowOpen) return;
    const seen = new Set<string>();
    const stats = new Map<number, ProcStat>();
    const children = childMap(stats);
    for (const root of this.roots) {
      const pids = [root.pid, ...descendants(root.pid, children)];
      for (const pid of pids) {
        const st = stats.get(pid);
        if (!st) continue;
        const key = `${pid}:${st.startTime}`;
        seen.add(key);
        let t = this.tracked.get(key);
        if (!t) {
          const name = pid === root.pid ? root.name : root.namer ? root.namer(pid, st) : st.comm;
          t = {
            name,
            group: root.group,
            startTime: st.startTime,
            base: this.firstSample ? st.cpu : 0,
            last: st.cpu,
            hwmKb: 0,
            rssKb: 0,
            dead: false,
          };
          if (pid === root.pid && root.reaps) {
            t.rootOf = root.group;
            t.baseC = st.ccpu;
          }
          this.tracked.set(key, t);
        }
        t.last = st.cpu;
        if (t.rootOf) t.lastC = st.ccpu;
        const mem = readMem(pid);
        if (mem) {
          t.hwmKb = Math.max(t.hwmKb, mem.hwmKb);
          t.rssKb = mem.rssKb;
        }
      }
    }
    for (const [key, t] of this.tracked) if (!seen.has(key)) t.dead = true;
  }

  /** Current RSS and peak RSS (VmHWM) by process name, MB (for the soak timeline). */
  snapshotRss(): Record<string, { rss: number; peak: number }> {
    const out: Record<string, { rss: number; peak: number }> = {};
    for (const t of this.tracked.values()) {
      if (t.dead) continue;
      const k = `${t.group}/${t.name}`;
      const cur = out[k] ?? { rss: 0, peak: 0 };
      out[k] = { rss: Math.max(cur.rss, Math.round(t.rssKb / 1024)), peak: Math.max(cur.peak, Math.round(t.hwmKb / 1024)) };
    }
    this.rssTimeline.push({ t: Date.now(), rss: out });
    return out;
  }

  timeline(): Array<{ t: number; rss: Record<string, { rss: number; peak: number }> }> {
    return this.rssTimeline;
  }

  report(): ProcReport[] {
    const by = new Map<string, ProcReport>();
    const get = (group: string, name: string): ProcReport => {
      const k = `${group}\0${name}`;
      let r = by.get(k);
      if (!r) {
        r = { group, name, processes: 0, cpuSeconds: 0, peakRssMb: 0, sumPeakRssMb: 0 };
        by.set(k, r);
      }
      return r;
    };
    // cutime accounting per reaping root
    const deadSeenTotal = new Map<string, number>(); // group -> ticks of dead children (their whole last-seen cpu)
    for (const t of this.tracked.values()) {
      const r = get(t.group, t.name);
      r.processes += 1;
      r.cpuSeconds += (t.last - t.base) / CLK_TCK;
      r.peakRssMb = Math.max(r.peakRssMb, t.hwmKb / 1024);
      r.sumPeakRssMb += t.hwmKb / 1024;
      if (t.dead) deadSeenTotal.set(t.group, (deadSeenTotal.get(t.group) ?? 0) + t.last);
    }
    for (const t of this.tracked.values()) {
      if (!t.rootOf || t.baseC === undefined || t.lastC === undefined) continue;
      const reaped = t.lastC - t.baseC;
      const unseen = reaped - (deadSeenTotal.get(t.rootOf) ?? 0);
      if (unseen > 0) get(t.rootOf, '(exited)').cpuSeconds += unseen / CLK_TCK;
    }
    return [...by.values()].sort((a, b) => a.group.localeCompare(b.group) || b.cpuSeconds - a.cpuSeconds);
  }
}
