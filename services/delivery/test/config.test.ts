// The delivery service's settings: a bad value stops the start with a
// message naming the variable (ConfigError, exit 78 from main.ts).
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { configProblems } from '@tern/config';
import { loadConfig } from '../src/config';

const base = { TERN_NATS_URL: 'nats://127.0.0.1:4222', TERN_QUEUE_ADDR: '127.0.0.1:7003' };

const problems = (env: Record<string, string>): string[] => configProblems(() => loadConfig({ ...base, ...env }));

test('defaults', () => {
  const c = loadConfig(base);
  assert.equal(c.TERN_GRPC_LISTEN.port, 7004);
  assert.equal(c.TERN_METRICS_LISTEN.port, 9104);
  assert.equal(c.TERN_SMTP_PORT, 25);
  assert.equal(c.TERN_MTA_STS, true);
  assert.equal(c.TERN_DANE, true);
  assert.deepEqual(c.TERN_DKIM_KEYS, []);
  assert.equal(c.TERN_RESULT_BATCH_DELAY_MS, 10);
  assert.equal(c.TERN_RESULT_BATCH_MAX, 64);
  assert.equal(c.TERN_SMTP_MAX_SESSIONS_PER_PEER, 20);
  assert.equal(loadConfig({ ...base, TERN_RESULT_BATCH_DELAY_MS: '0' }).TERN_RESULT_BATCH_DELAY_MS, 0, 'no delay: the end of the event-loop turn');
});

test('bad values are refused naming the variable', () => {
  assert.match(problems({ TERN_SMTP_PORT: 'x' }).join(), /^TERN_SMTP_PORT: /);
  assert.match(problems({ TERN_RESULT_BATCH_DELAY_MS: '-1' }).join(), /^TERN_RESULT_BATCH_DELAY_MS: /);
  assert.match(problems({ TERN_RESULT_BATCH_MAX: '0' }).join(), /^TERN_RESULT_BATCH_MAX: /);
  assert.match(problems({ TERN_SMTP_MAX_SESSIONS_PER_PEER: '0' }).join(), /^TERN_SMTP_MAX_SESSIONS_PER_PEER: /);
  assert.match(problems({ TERN_SOURCE_ADDRESS: 'not-an-ip' }).join(), /^TERN_SOURCE_ADDRESS: /);
  assert.match(problems({ TERN_MTA_STS: 'perhaps' }).join(), /^TERN_MTA_STS: /);
  assert.match(problems({ TERN_SMTP_TLS_CA_FILE: '/no/such/ca.pem' }).join(), /^TERN_SMTP_TLS_CA_FILE: cannot read this file/);
  assert.match(problems({ TERN_DKIM_KEYS: 'example.com:/no-selector' }).join(), /^TERN_DKIM_KEYS: .*expected domain:selector/);
  assert.match(problems({ TERN_DKIM_KEYS: 'example.com:s1:/no/such/key.pem' }).join(), /^TERN_DKIM_KEYS: .*cannot use \/no\/such\/key\.pem/);
});

test('a readable DKIM key and CA file are accepted', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-delivery-config-'));
  try {
    const key = path.join(dir, 'k.pem');
    fs.writeFileSync(key, crypto.generateKeyPairSync('ed25519').privateKey.export({ type: 'pkcs8', format: 'pem' }));
    const c = loadConfig({ ...base, TERN_DKIM_KEYS: `example.com:s1:${key}`, TERN_SMTP_TLS_CA_FILE: key });
    assert.deepEqual(c.TERN_DKIM_KEYS, [`example.com:s1:${key}`]);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
