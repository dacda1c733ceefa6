// Issue 23: the Grafana dashboards (ConfigMaps for the Grafana sidecar) and the
// PrometheusRule the chart renders from charts/tern/dashboards/*.json and
// templates/prometheusrule.yaml. What they query is checked against a running
// platform in tests/observability.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { CHART, NAMESPACE, RELEASE, findAll, render, renderError, type K8sObject } from './render';

const DASHBOARDS = fs
  .readdirSync(path.join(CHART, 'dashboards'))
  .filter((f) => f.endsWith('.json'))
  .sort();

interface Dashboard {
  uid: string;
  title: string;
  templating: { list: Array<{ name: string }> };
  panels: Array<{ type: string; title: string; datasource?: { uid: string }; targets?: Array<{ expr: string }> }>;
}

const dashboardMaps = (objs: K8sObject[]) => findAll(objs, 'ConfigMap').filter((c) => c.metadata.name.startsWith(`${RELEASE}-dashboard-`));

test('no dashboards and no PrometheusRule unless asked for', () => {
  const objs = render();
  assert.deepEqual(dashboardMaps(objs), []);
  assert.deepEqual(findAll(objs, 'PrometheusRule'), []);
});

test('dashboards.enabled renders one ConfigMap per dashboard file, labelled for the Grafana sidecar, holding the file as is', () => {
  assert.deepEqual(DASHBOARDS, ['delivery-out.json', 'overview.json', 'queue.json', 'services.json', 'smtp-in.json']);
  const maps = dashboardMaps(render({ dashboards: { enabled: true } }));
  assert.deepEqual(maps.map((m) => m.metadata.name).sort(), DASHBOARDS.map((f) => `${RELEASE}-dashboard-${f.replace(/\.json$/, '')}`).sort());
  for (const m of maps) {
    assert.equal(m.metadata.namespace, NAMESPACE);
    assert.equal(m.metadata.labels?.grafana_dashboard, '1', `${m.metadata.name}: the sidecar's default label`);
    assert.equal(m.metadata.labels?.['app.kubernetes.io/instance'], RELEASE);
    const keys = Object.keys(m.data ?? {});
    assert.equal(keys.length, 1);
    const file = keys[0]!.replace(/^tern-/, '');
    assert.deepEqual(JSON.parse(m.data![keys[0]!]!), JSON.parse(fs.readFileSync(path.join(CHART, 'dashboards', file), 'utf8')), `${m.metadata.name} holds ${file}`);
  }
});

test('the sidecar label, its value, extra labels, annotations and the namespace are configurable', () => {
  const maps = dashboardMaps(
    render({ dashboards: { enabled: true, label: 'grafana_dashboard_tern', labelValue: 'yes', labels: { team: 'mail' }, annotations: { grafana_folder: 'Tern' }, namespace: 'monitoring' } }),
  );
  assert.equal(maps.length, DASHBOARDS.length);
  for (const m of maps) {
    assert.equal(m.metadata.labels?.grafana_dashboard_tern, 'yes');
    assert.equal(m.metadata.labels?.grafana_dashboard, undefined);
    assert.equal(m.metadata.labels?.team, 'mail');
    assert.equal(m.metadata.annotations?.grafana_folder, 'Tern');
    assert.equal(m.metadata.namespace, 'monitoring');
  }
  assert.match(renderError({ dashboards: { enabled: true, labelz: {} } }), /labelz/, 'a misspelled key is refused');
});

test('every dashboard is importable: a unique uid, a Prometheus data source variable every panel uses, and a query in every panel', () => {
  const uids = new Set<string>();
  for (const f of DASHBOARDS) {
    const d = JSON.parse(fs.readFileSync(path.join(CHART, 'dashboards', f), 'utf8')) as Dashboard;
    assert.match(d.uid, /^tern-[a-z-]+$/, f);
    assert.ok(!uids.has(d.uid), `${f}: uid ${d.uid} is unique`);
    uids.add(d.uid);
    assert.ok(d.title.startsWith('Tern / '), f);
    assert.ok(d.templating.list.some((v) => v.name === 'datasource'), `${f}: a datasource variable`);
    const panels = d.panels.filter((p) => p.type !== 'row');
    assert.ok(panels.length >= 4, `${f}: has panels`);
    for (const p of panels) {
      assert.equal(p.datasource?.uid, '${datasource}', `${f} / ${p.title}: queries the chosen data source`);
      assert.ok(p.targets?.length, `${f} / ${p.title}: has a query`);
      for (const t of p.targets!) assert.ok(t.expr.trim(), `${f} / ${p.title}: non-empty expr`);
    }
  }
});

interface Rule {
  alert?: string;
  expr: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}

test('prometheusRule.enabled renders a PrometheusRule whose selector labels, alert labels and thresholds come from values', () => {
  const objs = render({
    prometheusRule: { enabled: true, labels: { release: 'prometheus' }, alertLabels: { team: 'mail' }, thresholds: { deferralRatio: 0.3, natsConsumerPending: 500 } },
  });
  const [rule, ...more] = findAll(objs, 'PrometheusRule');
  assert.equal(more.length, 0);
  assert.equal(rule!.apiVersion, 'monitoring.coreos.com/v1');
  assert.equal(rule!.metadata.namespace, NAMESPACE);
  assert.equal(rule!.metadata.labels?.release, 'prometheus');
  const rules = (rule as unknown as { spec: { groups: Array<{ rules: Rule[] }> } }).spec.groups.flatMap((g) => g.rules);
  for (const r of rules) {
    assert.equal(r.labels?.team, 'mail', `${r.alert}: alert labels`);
    assert.match(r.expr, new RegExp(`namespace="${NAMESPACE}"`), `${r.alert}: limited to the release's namespace`);
  }
  const byName = (n: string) => rules.find((r) => r.alert === n)!;
  assert.match(byName('TernDestinationDeferralRatioHigh').expr, /> 0\.3\)/);
  assert.match(byName('TernNatsConsumerBacklog').expr, /> 500$/);
  assert.deepEqual(
    rules.filter((r) => r.alert === 'TernServiceAbsent').map((r) => r.labels?.job),
    ['admin', 'ingress', 'policy', 'queue', 'delivery', 'bounce', 'webhooks'],
    'one absence alert per service',
  );
  const withoutWebhooks = (findAll(render({ prometheusRule: { enabled: true }, webhooks: { enabled: false } }), 'PrometheusRule')[0] as unknown as { spec: { groups: Array<{ rules: Rule[] }> } }).spec.groups.flatMap((g) => g.rules);
  assert.ok(!withoutWebhooks.some((r) => r.labels?.job === 'webhooks' || r.expr.includes('webhooks')), 'no alert for a service the release does not run');
  assert.match(renderError({ prometheusRule: { enabled: true, thresholds: { deferralRatio: 2 } } }), /deferralRatio/, 'a ratio over 1 is refused');
});
