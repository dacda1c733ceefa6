// The chart's PrometheusRule as Prometheus reads it (a rule file's `groups`),
// the PromQL expressions of the dashboards and rules, and Debian's prometheus
// and promtool binaries (scripts/install-prometheus.sh).
import fs from 'node:fs';
import path from 'node:path';
import { CHART, find, RELEASE, render } from '../chart/render';

export interface Rule {
  alert?: string;
  record?: string;
  expr: string;
  for?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}
export interface RuleGroup {
  name: string;
  rules: Rule[];
}

/** spec.groups of the PrometheusRule `helm template` renders with prometheusRule.enabled (namespace "mail"). */
export function renderedRuleGroups(values: object = {}): RuleGroup[] {
  const objs = render({ prometheusRule: { enabled: true }, ...values });
  const rule = find(objs, 'PrometheusRule', RELEASE) as unknown as { spec: { groups: RuleGroup[] } };
  return rule.spec.groups;
}

export interface DashboardQuery {
  dashboard: string;
  panel: string;
  expr: string;
}

/** Every query of every panel of charts/tern/dashboards/*.json. */
export function dashboardQueries(): DashboardQuery[] {
  const dir = path.join(CHART, 'dashboards');
  const out: DashboardQuery[] = [];
  for (const f of fs.readdirSync(dir).filter((x) => x.endsWith('.json'))) {
    const d = JSON.parse(fs.readFileSync(path.join(dir, f), 'utf8')) as { panels: Array<{ title: string; targets?: Array<{ expr: string }> }> };
    for (const p of d.panels) for (const t of p.targets ?? []) out.push({ dashboard: f, panel: p.title, expr: t.expr });
  }
  return out;
}

/** A dashboard query with Grafana's variables replaced, ready for Prometheus' HTTP API. */
export function substituteGrafanaVariables(expr: string, vars: { namespace: string; job?: string }): string {
  return expr
    .replaceAll('$namespace', vars.namespace)
    .replaceAll('$job', vars.job ?? 'admin|ingress|policy|queue|delivery|bounce')
    .replaceAll('$__rate_interval', '1m');
}

function debianBinary(name: string): string {
  for (const p of [`/usr/bin/${name}`, `/usr/local/bin/${name}`]) if (fs.existsSync(p)) return p;
  throw new Error(`${name} is not installed: run \`bash scripts/install-prometheus.sh\` (Debian's prometheus package; scripts/system-deps.sh runs it), then this test again`);
}
export const promtoolBinary = () => debianBinary('promtool');
export const prometheusBinary = () => debianBinary('prometheus');
