import type { ProcReport } from './procs';

export interface LatencyStats {
  method: string;
  n: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
  mean: number;
}

export interface RunResult {
  mta: string;
  scenario: string;
  run?: number;
  /** with --repeat: how many runs, and the range of the rates over them */
  runs?: number;
  range?: { acceptRate: [number, number]; e2eRate: [number, number] };
  size: number;
  sessions: number;
  messages: number;
  ok: boolean;
  error?: string;
  accepted: number;
  refused: number;
  refusals: Record<string, number>;
  delivered: number;
  acceptSeconds: number;
  e2eSeconds: number;
  acceptRate: number;
  e2eRate: number;
  latency?: LatencyStats;
  serverLatency?: LatencyStats;
  unmatched: number;
  cpuPer1000: number; // MTA processes only
  cpuPer1000ByProcess: Record<string, number>;
  peakRssMb: Record<string, number>;
  processes: ProcReport[];
  load: ProcReport[]; // smtp-source, smtp-sink
  harnessCpuSeconds: number;
  dbReport?: string;
  rssTimeline?: Array<{ t: number; rss: Record<string, { rss: number; peak: number }> }>;
}

/** One result per scenario and side: the run with the median end-to-end (else accepted) rate. */
export function medianRuns(results: RunResult[]): RunResult[] {
  const groups = new Map<string, RunResult[]>();
  for (const r of results) {
    const k = `${r.scenario}\0${r.mta}`;
    groups.set(k, [...(groups.get(k) ?? []), r]);
  }
  const out: RunResult[] = [];
  for (const list of groups.values()) {
    if (list.length === 1) {
      out.push(list[0]!);
      continue;
    }
    const key = (r: RunResult): number => (Number.isNaN(r.e2eRate) ? r.acceptRate : r.e2eRate);
    const ok = list.filter((r) => r.ok);
    const pool = ok.length ? ok : list;
    const sorted = [...pool].sort((a, b) => (key(a) || 0) - (key(b) || 0));
    const med = sorted[Math.floor((sorted.length - 1) / 2)]!;
    const span = (f: (r: RunResult) => number): [number, number] => {
      const v = pool.map(f).filter((x) => !Number.isNaN(x));
      return v.length ? [Math.min(...v), Math.max(...v)] : [NaN, NaN];
    };
    out.push({ ...med, runs: list.length, range: { acceptRate: span((r) => r.acceptRate), e2eRate: span((r) => r.e2eRate) } });
  }
  return out;
}

const fmt = (v: number | undefined, digits = 1): string =>
  v === undefined || Number.isNaN(v) ? '-' : v >= 100 ? v.toFixed(0) : v.toFixed(digits);

const ratio = (t: number | undefined, p: number | undefined): string =>
  t === undefined || p === undefined || !p || Number.isNaN(t) || Number.isNaN(p) ? '-' : (t / p).toFixed(2);

function pad(s: string, n: number, right = false): string {
  return right ? s.padEnd(n) : s.padStart(n);
}

export function table(results: RunResult[]): string {
  const out: string[] = [];
  const scenarios = [...new Set(results.map((r) => r.scenario))];
  for (const sc of scenarios) {
    const p = results.find((r) => r.scenario === sc && r.mta === 'postfix');
    const t = results.find((r) => r.scenario === sc && r.mta === 'tern');
    const any = (p ?? t)!;
    out.push('');
    out.push(`== ${sc}: ${any.messages} messages of ${any.size} bytes over ${any.sessions} sessions`);
    out.push(`${pad('metric', 34, true)}${pad('postfix', 11)}${pad('tern', 11)}${pad('tern/postfix', 14)}`);
    const row = (label: string, pv: number | undefined, tv: number | undefined, note = '', digits = 1): void => {
      out.push(`${pad(label, 34, true)}${pad(fmt(pv, digits), 11)}${pad(fmt(tv, digits), 11)}${pad(ratio(tv, pv), 14)}  ${note}`.trimEnd());
    };
    row('accepted msgs/s', p?.acceptRate, t?.acceptRate, 'higher is better');
    row('end-to-end msgs/s', p?.e2eRate, t?.e2eRate, 'higher is better');
    row('accept->delivery p50 ms', p?.latency?.p50, t?.latency?.p50, 'lower is better');
    row('accept->delivery p99 ms', p?.latency?.p99, t?.latency?.p99, 'lower is better');
    row('CPU s / 1000 msgs (all procs)', p?.cpuPer1000, t?.cpuPer1000, 'lower is better', 2);
    const sumRss = (r?: RunResult): number | undefined => (r ? Object.values(r.peakRssMb).reduce((a, b) => a + b, 0) : undefined);
    row('peak RSS MB (sum of per-name max)', sumRss(p), sumRss(t), 'lower is better');
    for (const r of [p, t]) {
      if (!r) continue;
      if (r.runs && r.range) {
        out.push(
          `  ${r.mta}: median of ${r.runs} runs (by end-to-end rate); accepted ${fmt(r.range.acceptRate[0])}-${fmt(r.range.acceptRate[1])}/s, end-to-end ${fmt(r.range.e2eRate[0])}-${fmt(r.range.e2eRate[1])}/s`,
        );
      }
      if (!r.ok) out.push(`  ${r.mta}: FAILED: ${r.error}`);
      else if (r.error) out.push(`  ${r.mta}: note: ${r.error}`);
      if (r.refused) out.push(`  ${r.mta}: ${r.refused} refusals: ${JSON.stringify(r.refusals)}`);
      if (r.accepted !== r.messages) out.push(`  ${r.mta}: accepted ${r.accepted} of ${r.messages}`);
      if (r.delivered !== r.accepted) out.push(`  ${r.mta}: delivered ${r.delivered} of ${r.accepted} accepted`);
      const procs = Object.entries(r.cpuPer1000ByProcess)
        .filter(([, v]) => v >= 0.005)
        .sort((a, b) => b[1] - a[1])
        .map(([k, v]) => `${k} ${v.toFixed(2)}`);
      out.push(`  ${r.mta} CPU s/1000 by process: ${procs.join(', ')}`);
      const rss = Object.entries(r.peakRssMb)
        .sort((a, b) => b[1] - a[1])
        .map(([k, v]) => `${k} ${v.toFixed(0)}`);
      out.push(`  ${r.mta} peak RSS MB by process: ${rss.join(', ')}`);
      if (r.serverLatency) out.push(`  ${r.mta} ${r.serverLatency.method}: p50 ${fmt(r.serverLatency.p50)} p99 ${fmt(r.serverLatency.p99)} ms (n=${r.serverLatency.n})`);
      const load = r.load.map((x) => `${x.name} ${((x.cpuSeconds * 1000) / Math.max(1, r.accepted)).toFixed(2)}`).join(', ');
      out.push(`  ${r.mta} load generator CPU s/1000 (not counted): ${load}; harness ${((r.harnessCpuSeconds * 1000) / Math.max(1, r.accepted)).toFixed(2)}`);
    }
  }
  return out.join('\n');
}
