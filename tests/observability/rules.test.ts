// Issue 23: the chart's alert rules as Prometheus' own tool reads them.
// `promtool check rules` validates the rendered groups (syntax, templates);
// `promtool test rules` runs the alerts over synthetic series, so the
// expressions are shown to fire when they should and stay quiet otherwise.
// Every runbook_url leads to a section of docs/operating.md.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { stringify } from 'yaml';
import { ROOT } from '../chart/render';
import { promtoolBinary, renderedRuleGroups } from './rules';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-rules-'));
after(() => fs.rmSync(dir, { recursive: true, force: true }));
const groups = renderedRuleGroups();
const rulesFile = path.join(dir, 'tern-rules.yaml');
fs.writeFileSync(rulesFile, stringify({ groups }));

test('promtool check rules passes on the rendered PrometheusRule', () => {
  const r = spawnSync(promtoolBinary(), ['check', 'rules', rulesFile], { encoding: 'utf8' });
  assert.equal(r.status, 0, `promtool check rules: ${r.stdout}${r.stderr}`);
  const n = groups.reduce((a, g) => a + g.rules.length, 0);
  assert.match(r.stdout, new RegExp(`SUCCESS: ${n} rules found`));
});

test('promtool check rules would fail on a broken expression (the check can fail)', () => {
  const bad = path.join(dir, 'bad.yaml');
  fs.writeFileSync(bad, stringify({ groups: [{ name: 'bad', rules: [{ alert: 'Bad', expr: 'sum(tern_queue_recipients' }] }] }));
  const r = spawnSync(promtoolBinary(), ['check', 'rules', bad], { encoding: 'utf8' });
  assert.notEqual(r.status, 0);
});

test('every alert has a severity, a summary and a runbook_url that leads to its section of docs/operating.md', () => {
  const doc = fs.readFileSync(path.join(ROOT, 'docs/operating.md'), 'utf8');
  // GitHub's anchors: lower case, punctuation dropped, spaces as dashes.
  const anchors = new Set([...doc.matchAll(/^#+ (.+)$/gm)].map((m) => m[1]!.trim().toLowerCase().replace(/[^\w\- ]/g, '').replace(/ /g, '-')));
  const alerts = groups.flatMap((g) => g.rules).filter((r) => r.alert);
  assert.ok(alerts.length >= 12);
  for (const a of alerts) {
    assert.match(a.labels?.severity ?? '', /^(critical|warning)$/, `${a.alert}: severity`);
    assert.ok(a.annotations?.summary, `${a.alert}: summary`);
    const url = a.annotations?.runbook_url ?? '';
    assert.match(url, /^https:\/\/github\.com\/tern-mta\/tern\/blob\/main\/docs\/operating\.md#[a-z0-9-]+$/, `${a.alert}: runbook_url ${url}`);
    const anchor = url.split('#')[1]!;
    assert.equal(anchor, a.alert!.toLowerCase(), `${a.alert}: the anchor is the alert's name`);
    assert.ok(anchors.has(anchor), `${a.alert}: docs/operating.md has a section "### ${a.alert}" (#${anchor})`);
  }
});

/** Runs `promtool test rules` on one test case against the rendered rules; returns its output. */
function promtoolTest(name: string, testCase: object): { ok: boolean; out: string } {
  const file = path.join(dir, `${name}.test.yaml`);
  fs.writeFileSync(file, stringify({ rule_files: [rulesFile], evaluation_interval: '1m', tests: [testCase] }));
  try {
    return { ok: true, out: execFileSync(promtoolBinary(), ['test', 'rules', file], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }) };
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string };
    return { ok: false, out: `${e.stdout ?? ''}${e.stderr ?? ''}` };
  }
}

const ns = 'namespace="mail"';
const up = (job: string, v: string) => ({ series: `up{${ns},job="${job}",pod="${job}-0"}`, values: v });
const allUp = ['admin', 'ingress', 'policy', 'queue', 'delivery', 'bounce', 'webhooks'].map((j) => up(j, '1x60'));

test('TernDeliveryStalled fires when recipients wait due and no result is applied, not while results come in', () => {
  const stalled = promtoolTest('stalled', {
    interval: '1m',
    input_series: [
      { series: `tern_queue_recipients{${ns},pod="queue-0",state="queued"}`, values: '5x40' },
      { series: `tern_queue_recipients{${ns},pod="queue-1",state="queued"}`, values: '5x40' },
      // Results until minute 10, none after.
      { series: `tern_queue_results_applied_total{${ns},pod="queue-0",state="delivered",destination="a.test"}`, values: '0+3x10 30x30' },
    ],
    alert_rule_test: [
      { eval_time: '22m', alertname: 'TernDeliveryStalled', exp_alerts: [] },
      {
        eval_time: '32m',
        alertname: 'TernDeliveryStalled',
        exp_alerts: [{ exp_labels: { severity: 'critical' }, exp_annotations: groups.flatMap((g) => g.rules).find((r) => r.alert === 'TernDeliveryStalled')!.annotations }],
      },
    ],
  });
  assert.ok(stalled.ok, stalled.out);
  const moving = promtoolTest('moving', {
    interval: '1m',
    input_series: [
      { series: `tern_queue_recipients{${ns},pod="queue-0",state="queued"}`, values: '5x40' },
      { series: `tern_queue_results_applied_total{${ns},pod="queue-0",state="delivered",destination="a.test"}`, values: '0+3x40' },
    ],
    alert_rule_test: [{ eval_time: '30m', alertname: 'TernDeliveryStalled', exp_alerts: [] }],
  });
  assert.ok(moving.ok, moving.out);
  // The test itself can fail: expecting no alert where one fires is reported.
  const wrong = promtoolTest('wrong', {
    interval: '1m',
    input_series: [{ series: `tern_queue_recipients{${ns},pod="queue-0",state="queued"}`, values: '5x40' }],
    alert_rule_test: [{ eval_time: '30m', alertname: 'TernDeliveryStalled', exp_alerts: [] }],
  });
  assert.equal(wrong.ok, false, 'with no results at all, the alert fires (the counter may not exist yet)');
});

test('a destination with mostly deferrals alerts under its name; one with too few results does not', () => {
  const r = promtoolTest('ratio', {
    interval: '1m',
    input_series: [
      { series: `tern_queue_results_applied_total{${ns},pod="queue-0",state="deferred",destination="slow.test"}`, values: '0+8x60' },
      { series: `tern_queue_results_applied_total{${ns},pod="queue-0",state="delivered",destination="slow.test"}`, values: '0+2x60' },
      { series: `tern_queue_results_applied_total{${ns},pod="queue-1",state="deferred",destination="slow.test"}`, values: '0+8x60' },
      { series: `tern_queue_results_applied_total{${ns},pod="queue-0",state="deferred",destination="tiny.test"}`, values: '0+1x60' },
      { series: `tern_queue_results_applied_total{${ns},pod="queue-0",state="delivered",destination="fine.test"}`, values: '0+50x60' },
      { series: `tern_queue_results_applied_total{${ns},pod="queue-0",state="failed",destination="fine.test"}`, values: '0+1x60' },
    ],
    alert_rule_test: [
      {
        eval_time: '40m',
        alertname: 'TernDestinationDeferralRatioHigh',
        exp_alerts: [
          {
            exp_labels: { severity: 'warning', destination: 'slow.test' },
            exp_annotations: {
              summary: '88.89% of the results for slow.test are deferrals.',
              description: 'The destination answers 4xx (greylisting, rate limits, a block in progress) or cannot be reached.',
              runbook_url: 'https://github.com/tern-mta/tern/blob/main/docs/operating.md#terndestinationdeferralratiohigh',
            },
          },
        ],
      },
      { eval_time: '40m', alertname: 'TernDestinationBounceRatioHigh', exp_alerts: [] },
    ],
  });
  assert.ok(r.ok, r.out);
});

test('a service with no target up is absent under its job; a target down is down; the rest stay quiet', () => {
  const r = promtoolTest('services', {
    interval: '1m',
    input_series: [...allUp.filter((s) => !s.series.includes('"queue"') && !s.series.includes('"delivery"')), up('delivery', '0x60')],
    alert_rule_test: [
      { eval_time: '3m', alertname: 'TernServiceAbsent', exp_alerts: [] },
      {
        eval_time: '10m',
        alertname: 'TernServiceAbsent',
        exp_alerts: [
          { exp_labels: { severity: 'critical', job: 'queue' } },
          { exp_labels: { severity: 'critical', job: 'delivery' } },
        ].map((a) => ({
          ...a,
          exp_annotations: groups.flatMap((g) => g.rules).find((x) => x.alert === 'TernServiceAbsent' && x.labels?.job === a.exp_labels.job)!.annotations,
        })),
      },
      {
        eval_time: '10m',
        alertname: 'TernServiceDown',
        exp_alerts: [
          {
            exp_labels: { severity: 'critical', namespace: 'mail', job: 'delivery', pod: 'delivery-0' },
            exp_annotations: {
              summary: 'delivery pod delivery-0 does not answer its metrics scrape.',
              description: 'The pod is down, restarting, or its metrics port is blocked.',
              runbook_url: 'https://github.com/tern-mta/tern/blob/main/docs/operating.md#ternservicedown',
            },
          },
        ],
      },
    ],
  });
  assert.ok(r.ok, r.out);
});

test('the queue refusing mail, an old deferred recipient and a stuck outbox alert; thresholds come from values', () => {
  const r = promtoolTest('queue', {
    interval: '1m',
    input_series: [
      { series: `tern_queue_accepting{${ns},pod="queue-0"}`, values: '1 1 1 0x20' },
      { series: `tern_queue_oldest_recipient_age_seconds{${ns},pod="queue-0",state="deferred"}`, values: '21000+60x30' },
      { series: `tern_queue_outbox_oldest_age_seconds{${ns},pod="queue-0"}`, values: '0 0 0 30+60x20' },
    ],
    alert_rule_test: [
      { eval_time: '4m', alertname: 'TernQueueNotAccepting', exp_alerts: [] },
      { eval_time: '6m', alertname: 'TernQueueNotAccepting', exp_alerts: [{ exp_labels: { severity: 'critical' } }].map((a) => ({ ...a, exp_annotations: annotationsOf('TernQueueNotAccepting') })) },
      { eval_time: '5m', alertname: 'TernOldestDeferredTooOld', exp_alerts: [] },
      { eval_time: '20m', alertname: 'TernOldestDeferredTooOld', exp_alerts: [{ exp_labels: { severity: 'warning' } }].map((a) => ({ ...a, exp_annotations: { ...annotationsOf('TernOldestDeferredTooOld'), summary: 'The oldest deferred recipient was queued 6h 10m 0s ago.' } })) },
      { eval_time: '6m', alertname: 'TernOutboxBacklog', exp_alerts: [] },
      { eval_time: '12m', alertname: 'TernOutboxBacklog', exp_alerts: [{ exp_labels: { severity: 'critical' } }].map((a) => ({ ...a, exp_annotations: { ...annotationsOf('TernOutboxBacklog'), summary: 'The oldest outbox row has waited 9m 30s to be published to NATS.' } })) },
    ],
  });
  assert.ok(r.ok, r.out);
  const groups2 = renderedRuleGroups({ prometheusRule: { enabled: true, thresholds: { oldestDeferredSeconds: 600 }, alertLabels: { team: 'mail' } } });
  const rule = groups2.flatMap((g) => g.rules).find((x) => x.alert === 'TernOldestDeferredTooOld')!;
  assert.match(rule.expr, /> 600$/);
  assert.equal(rule.labels?.team, 'mail');
});

function annotationsOf(alert: string): Record<string, string> {
  return groups.flatMap((g) => g.rules).find((r) => r.alert === alert)!.annotations!;
}

test('an SMTP certificate within the expiry window alerts for its pod; one renewed far ahead does not', () => {
  const day = 86400;
  const r = promtoolTest('tls', {
    interval: '1m',
    input_series: [
      // promtool's clock starts at the epoch: these expire 10 and 60 days after it.
      { series: `tern_ingress_tls_certificate_expiry_timestamp_seconds{${ns},job="ingress",pod="ingress-0"}`, values: `${10 * day}x200` },
      { series: `tern_ingress_tls_certificate_expiry_timestamp_seconds{${ns},job="ingress",pod="ingress-1"}`, values: `${60 * day}x200` },
    ],
    alert_rule_test: [
      { eval_time: '30m', alertname: 'TernTlsCertificateExpiring', exp_alerts: [] },
      {
        eval_time: '2h',
        alertname: 'TernTlsCertificateExpiring',
        exp_alerts: [
          {
            exp_labels: { severity: 'warning', pod: 'ingress-0' },
            exp_annotations: { ...annotationsOf('TernTlsCertificateExpiring'), summary: 'The SMTP certificate of ingress pod ingress-0 expires in 9d 22h 0m 0s.' },
          },
        ],
      },
    ],
  });
  assert.ok(r.ok, r.out);
});

test('a webhook endpoint suspended for 5 minutes alerts; dropped webhook deliveries alert by result; deliveries and retries alone do not', () => {
  const webhooks = (name: string, labels: string, values: string) => ({ series: `${name}{${ns},job="webhooks",${labels}}`, values });
  const r = promtoolTest('webhooks', {
    interval: '1m',
    input_series: [
      // Both pods read the same endpoints from Postgres: one suspended from minute 11.
      webhooks('tern_webhooks_endpoints', 'pod="webhooks-0",state="active"', '2x40'),
      webhooks('tern_webhooks_endpoints', 'pod="webhooks-0",state="suspended"', '0x10 1x30'),
      webhooks('tern_webhooks_endpoints', 'pod="webhooks-1",state="suspended"', '0x10 1x30'),
      webhooks('tern_webhooks_deliveries_total', 'pod="webhooks-0",result="delivered"', '0+10x40'),
      webhooks('tern_webhooks_deliveries_total', 'pod="webhooks-0",result="retry"', '0+3x40'),
      // Expiries from minute 22.
      webhooks('tern_webhooks_deliveries_total', 'pod="webhooks-0",result="expired"', '0x20 0+4x20'),
      webhooks('tern_webhooks_deliveries_total', 'pod="webhooks-1",result="overflow"', '0x40'),
    ],
    alert_rule_test: [
      { eval_time: '14m', alertname: 'TernWebhookEndpointSuspended', exp_alerts: [] },
      {
        eval_time: '17m',
        alertname: 'TernWebhookEndpointSuspended',
        exp_alerts: [{ exp_labels: { severity: 'warning' }, exp_annotations: { ...annotationsOf('TernWebhookEndpointSuspended'), summary: 'Webhook endpoints suspended: 1.' } }],
      },
      { eval_time: '20m', alertname: 'TernWebhookDeliveriesDropped', exp_alerts: [] },
      {
        eval_time: '25m',
        alertname: 'TernWebhookDeliveriesDropped',
        exp_alerts: [
          {
            exp_labels: { severity: 'warning', result: 'expired' },
            exp_annotations: { ...annotationsOf('TernWebhookDeliveriesDropped'), summary: 'Webhook deliveries are being dropped (expired): their events will never reach the endpoint.' },
          },
        ],
      },
    ],
  });
  assert.ok(r.ok, r.out);
  // The test can fail: an endpoint suspended is not a healthy state.
  const wrong = promtoolTest('webhooks-wrong', {
    interval: '1m',
    input_series: [webhooks('tern_webhooks_endpoints', 'pod="webhooks-0",state="suspended"', '1x20')],
    alert_rule_test: [{ eval_time: '10m', alertname: 'TernWebhookEndpointSuspended', exp_alerts: [] }],
  });
  assert.equal(wrong.ok, false, wrong.out);
});
