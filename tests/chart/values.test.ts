// Issue 8: values.schema.json makes a wrong value fail at install time, and
// the checked-in files generated from it and from values.yaml are current.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { render, renderError, ROOT } from './render';

test('a misspelled key fails helm template, naming the key', () => {
  assert.match(renderError({ ingress: { replica: 3 } }), /replica/);
  assert.match(renderError({ ingres: { replicas: 3 } }), /ingres/);
  assert.match(renderError({ delivery: { autoscaling: { keda: { enabeld: true } } } }), /enabeld/);
  assert.match(renderError({ networkPolicy: { dns: { too: [] } } }), /too/);
});

test('a value of the wrong type or outside its range fails', () => {
  assert.match(renderError({ ingress: { replicas: 'three' } }), /replicas/);
  assert.match(renderError({ ingress: { smtpService: { externalTrafficPolicy: 'Sometimes' } } }), /externalTrafficPolicy/);
  assert.match(renderError({ ingress: { smtpService: { ports: { smtp: 70000 } } } }), /smtp/);
  assert.match(renderError({ config: { logLevel: 'verbose' } }), /logLevel/);
  assert.match(renderError({ image: { digest: 'latest' } }), /digest/);
});

test('a secret cannot be given as a plain env value', () => {
  assert.match(renderError({ config: { env: { TERN_DATABASE_URL: 'postgres://u:p@h/db' } } }), /TERN_DATABASE_URL/);
  assert.match(renderError({ queue: { env: { TERN_NATS_URL: 'nats://u:p@h' } } }), /TERN_NATS_URL/);
  assert.match(renderError({ admin: { env: { TERN_ADMIN_TOKENS: 'ops:x' } } }), /TERN_ADMIN_TOKENS/);
  assert.match(renderError({ policy: { env: { SMARTHOST_PASSWORD: 'x' } } }), /SMARTHOST_PASSWORD/);
  assert.match(renderError({ policy: { extraEnv: [{ name: 'API_TOKEN', value: 'x' }] } }), /extraEnv/);
  // File paths and valueFrom are fine.
  render({ policy: { env: { TERN_SOMETHING_TOKEN_FILE: '/etc/x' }, extraEnv: [{ name: 'API_TOKEN', valueFrom: { secretKeyRef: { name: 's', key: 'k' } } }] } });
});

test('a chart-made Secret needs its value: create without a URL fails', () => {
  assert.match(renderError({ postgres: { secret: { create: true } } }), /url/);
  assert.match(renderError({ admin: { tokens: { create: true } } }), /tokens/);
});

test('the production-like and alternative values files render', () => {
  // The alternatives turn webhooks off.
  for (const [f, deployments] of [
    ['charts/tern/ci/production-values.yaml', 7],
    ['charts/tern/ci/alternatives-values.yaml', 6],
  ] as const) {
    const objs = render(undefined, { files: [f] });
    assert.equal(objs.filter((o) => o.kind === 'Deployment').length, deployments, f);
  }
});

test('webhooks values are checked like the others: unknown keys, wrong types, ports out of range', () => {
  assert.match(renderError({ webhooks: { enabeld: false } }), /enabeld/);
  assert.match(renderError({ webhooks: { replicas: 'one' } }), /replicas/);
  assert.match(renderError({ webhooks: { networkPolicy: { extraEgressPorts: [70000] } } }), /extraEgressPorts/);
  assert.match(renderError({ webhooks: { kekSecret: { key: '' } } }), /key/);
});

test('values.schema.json and the README values table are regenerated from their sources', () => {
  const node = process.execPath;
  for (const tool of ['values-schema.mjs', 'values-doc.mjs']) {
    const out = execFileSync(node, [path.join(ROOT, 'tests/chart/tools', tool), '--check'], { encoding: 'utf8', cwd: ROOT });
    assert.match(out, /up to date/);
  }
});
