// /metrics as Prometheus scrapes it: histograms in seconds get bounds from
// sub-millisecond to minutes, not the SDK's millisecond defaults.
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';
import { createTelemetry, SECONDS_BUCKETS } from '../src/index';

function get(port: number, path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path }, (res) => {
        let body = '';
        res.setEncoding('utf8').on('data', (d: string) => (body += d));
        res.on('end', () => resolve(body));
      })
      .on('error', reject);
  });
}

test('a histogram with unit "s" is bucketed in seconds: a 3 ms and a 42 s observation land in buckets of their own', async () => {
  const telemetry = createTelemetry({ service: 'metrics-test', logLevel: 'silent' });
  const seconds = telemetry.meter.createHistogram('tern_test_op_seconds', { description: 'test', unit: 's' });
  const sizes = telemetry.meter.createHistogram('tern_test_batch_size', { description: 'not a duration' });
  seconds.record(0.003);
  seconds.record(42);
  sizes.record(7);
  const server = await telemetry.serveMetrics('127.0.0.1', 0, () => true);
  try {
    const text = await get((server.address() as AddressInfo).port, '/metrics');
    const bucket = (name: string, le: string) => Number(new RegExp(`^${name}_bucket\\{[^}]*le="${le.replace('.', '\\.')}"[^}]*\\} (\\S+)`, 'm').exec(text)?.[1]);
    assert.equal(bucket('tern_test_op_seconds', '0.0025'), 0, text);
    assert.equal(bucket('tern_test_op_seconds', '0.005'), 1);
    assert.equal(bucket('tern_test_op_seconds', '30'), 1);
    assert.equal(bucket('tern_test_op_seconds', '60'), 2);
    const bounds = [...text.matchAll(/^tern_test_op_seconds_bucket\{[^}]*le="([^"]+)"/gm)].map((m) => m[1]);
    assert.deepEqual(bounds, [...SECONDS_BUCKETS.map(String), '+Inf']);
    // Other histograms keep the SDK's default bounds.
    assert.equal(bucket('tern_test_batch_size', '10'), 1);
  } finally {
    server.close();
    await telemetry.shutdown();
  }
});

test('nodejs_gc_runs_total has a series for every kind from the start, collected or not (a quiet service is scraped before its first collection)', async () => {
  const telemetry = createTelemetry({ service: 'metrics-test-gc', logLevel: 'silent' });
  const server = await telemetry.serveMetrics('127.0.0.1', 0, () => true);
  try {
    const text = await get((server.address() as AddressInfo).port, '/metrics');
    const kinds = [...text.matchAll(/^nodejs_gc_runs_total\{[^}]*kind="([^"]+)"[^}]*\} \d+/gm)].map((m) => m[1]).sort();
    assert.deepEqual(kinds, ['incremental', 'major', 'minor', 'weakcb'], text);
  } finally {
    await new Promise((resolve) => server.close(resolve));
    await telemetry.shutdown();
  }
});
