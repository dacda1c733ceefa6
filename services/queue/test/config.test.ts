// The queue's settings: defaults, and a bad value refused with a message
// naming the variable (ConfigError, exit 78 from main.ts).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { configProblems } from '@tern/config';
import { loadConfig } from '../src/config';

const base = { TERN_DATABASE_URL: 'postgres://tern:tern@127.0.0.1:5432/tern', TERN_NATS_URL: 'nats://127.0.0.1:4222' };

const problems = (env: Record<string, string>): string[] => configProblems(() => loadConfig({ ...base, ...env }));

test('per-destination job slots: 5 growing to 100 by default', () => {
  const c = loadConfig(base);
  assert.equal(c.TERN_QUEUE_DEST_CONCURRENCY_INIT, 5);
  assert.equal(c.TERN_QUEUE_DEST_CONCURRENCY_MAX, 100);
  assert.equal(loadConfig({ ...base, TERN_QUEUE_DEST_CONCURRENCY_MAX: '50' }).TERN_QUEUE_DEST_CONCURRENCY_MAX, 50);
});

test('bodies of queued messages: 64 MiB kept by default, 0 keeps none', () => {
  assert.equal(loadConfig(base).TERN_QUEUE_BODY_CACHE_BYTES, 64 * 1024 * 1024);
  assert.equal(loadConfig({ ...base, TERN_QUEUE_BODY_CACHE_BYTES: '0' }).TERN_QUEUE_BODY_CACHE_BYTES, 0);
});

test('bad values are refused naming the variable', () => {
  assert.match(problems({ TERN_QUEUE_BODY_CACHE_BYTES: '-1' }).join(), /^TERN_QUEUE_BODY_CACHE_BYTES: /);
  assert.match(problems({ TERN_QUEUE_DEST_CONCURRENCY_MAX: '0' }).join(), /^TERN_QUEUE_DEST_CONCURRENCY_MAX: /);
  assert.match(problems({ TERN_QUEUE_DEST_CONCURRENCY_INIT: 'many' }).join(), /^TERN_QUEUE_DEST_CONCURRENCY_INIT: /);
});
