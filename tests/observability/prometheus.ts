// A real Prometheus (Debian's binary) for the observability tests: its own
// configuration and data in a temporary directory, its own port on
// 127.0.0.1, a scrape every second of each service of a running platform,
// labelled as the chart's ServiceMonitor labels them (job = the service,
// namespace, pod), and the chart's rules loaded. The Harness stops it.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { stringify } from 'yaml';
import type { Harness, Platform } from '@tern/devkit';
import { prometheusBinary, type RuleGroup } from './rules';

export interface Prometheus {
  url: string;
  /** Instant query; throws with Prometheus' error for a bad one. */
  query(expr: string): Promise<Array<{ metric: Record<string, string>; value: [number, string] }>>;
  get<T>(apiPath: string): Promise<T>;
}

export async function startPrometheus(harness: Harness, platform: Platform, opts: { namespace: string; groups: RuleGroup[] }): Promise<Prometheus> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-prometheus-'));
  harness.defer(() => fs.rmSync(dir, { recursive: true, force: true }), 'remove prometheus dir');
  fs.writeFileSync(path.join(dir, 'rules.yaml'), stringify({ groups: opts.groups }));
  const config = {
    global: { scrape_interval: '1s', scrape_timeout: '900ms', evaluation_interval: '1s' },
    rule_files: [path.join(dir, 'rules.yaml')],
    scrape_configs: Object.entries(platform.services).map(([name, svc]) => ({
      job_name: name,
      static_configs: [{ targets: [svc.metricsAddr], labels: { namespace: opts.namespace, pod: `tern-${name}-0` } }],
    })),
  };
  fs.writeFileSync(path.join(dir, 'prometheus.yml'), stringify(config));
  const port = await harness.freePort();
  const log = fs.openSync(path.join(harness.logDir, 'prometheus.log'), 'a');
  const child: ChildProcess = spawn(
    prometheusBinary(),
    [
      `--config.file=${path.join(dir, 'prometheus.yml')}`,
      `--storage.tsdb.path=${path.join(dir, 'data')}`,
      `--web.listen-address=127.0.0.1:${port}`,
      '--log.level=warn',
    ],
    { stdio: ['ignore', log, log] },
  );
  fs.closeSync(log);
  let exited: number | null | undefined;
  const done = new Promise<void>((resolve) => child.on('exit', (code) => ((exited = code), resolve())));
  harness.defer(async () => {
    if (exited === undefined) {
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await done;
      clearTimeout(t);
    }
  }, `stop prometheus on ${port}`);
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (exited !== undefined) throw new Error(`prometheus exited (${exited}) at start; see ${path.join(harness.logDir, 'prometheus.log')}`);
    const ok = await fetch(`${url}/-/ready`).then((r) => r.ok, () => false);
    if (ok) break;
    if (Date.now() > deadline) throw new Error(`prometheus not ready on ${url} after 30 s; see ${path.join(harness.logDir, 'prometheus.log')}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  const get = async <T>(apiPath: string): Promise<T> => {
    const res = await fetch(`${url}${apiPath}`);
    const body = (await res.json()) as { status: string; data: T; error?: string };
    if (body.status !== 'success') throw new Error(`${apiPath}: ${body.error ?? res.status}`);
    return body.data;
  };
  return {
    url,
    get,
    query: async (expr) => (await get<{ result: Array<{ metric: Record<string, string>; value: [number, string] }> }>(`/api/v1/query?query=${encodeURIComponent(expr)}`)).result,
  };
}

/** Sample names in a Prometheus text exposition ("x_bucket", "x_count" for a histogram). */
export function sampleNames(text: string): Set<string> {
  const names = new Set<string>();
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = /^[a-zA-Z_:][a-zA-Z0-9_:]*/.exec(line);
    if (m) names.add(m[0]);
  }
  return names;
}
