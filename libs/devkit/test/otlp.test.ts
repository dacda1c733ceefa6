import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import zlib from 'node:zlib';
import { OtlpReceiver } from '../src/index';

const TRACE = '5b8efff798038103d269b633813fc60c';

function payload(spans: { spanId: string; parent?: string; name: string; service: string }[]) {
  return {
    resourceSpans: spans.map((s) => ({
      resource: { attributes: [{ key: 'service.name', value: { stringValue: s.service } }] },
      scopeSpans: [
        {
          scope: { name: 'tern' },
          spans: [
            {
              traceId: TRACE,
              spanId: s.spanId,
              parentSpanId: s.parent ?? '',
              name: s.name,
              kind: 2,
              startTimeUnixNano: '1700000000000000000',
              endTimeUnixNano: '1700000000100000000',
              attributes: [
                { key: 'tern.queue_id', value: { stringValue: 'Q1' } },
                { key: 'rcpt.count', value: { intValue: 3 } },
                { key: 'ok', value: { boolValue: true } },
                { key: 'list', value: { arrayValue: { values: [{ stringValue: 'a' }, { doubleValue: 1.5 }] } } },
              ],
              status: { code: 1 },
            },
          ],
        },
      ],
    })),
  };
}

describe('OtlpReceiver', () => {
  const otlp = new OtlpReceiver();
  before(() => otlp.start());
  after(() => otlp.close());

  test('collects spans from OTLP/HTTP JSON', async () => {
    const waiting = otlp.waitForSpan((s) => s.name === 'queue.Enqueue', 2000);
    const res = await fetch(otlp.tracesUrl, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(payload([
        { spanId: 'aaaaaaaaaaaaaaaa', name: 'smtp.session', service: 'tern-ingress' },
        { spanId: 'bbbbbbbbbbbbbbbb', parent: 'aaaaaaaaaaaaaaaa', name: 'queue.Enqueue', service: 'tern-queue' },
      ])),
    });
    assert.equal(res.status, 200);
    const span = await waiting;
    assert.equal(span.traceId, TRACE);
    assert.equal(span.parentSpanId, 'aaaaaaaaaaaaaaaa');
    assert.equal(span.serviceName, 'tern-queue');
    assert.deepEqual(span.attributes, { 'tern.queue_id': 'Q1', 'rcpt.count': 3, ok: true, list: ['a', 1.5] });
    const all = otlp.spansFor(TRACE.toUpperCase());
    assert.deepEqual(all.map((s) => [s.serviceName, s.name, s.parentSpanId]), [
      ['tern-ingress', 'smtp.session', undefined],
      ['tern-queue', 'queue.Enqueue', 'aaaaaaaaaaaaaaaa'],
    ]);
    assert.equal(await otlp.waitFor((spans) => spans.length >= 2 && spans.length), 2);
    assert.deepEqual(otlp.traceIds(), [TRACE]);
  });

  test('gzip, base64 ids, bad input, timeout', async () => {
    otlp.clear();
    const body = payload([{ spanId: 'cccccccccccccccc', name: 'delivery.attempt', service: 'tern-delivery' }]);
    const s0 = body.resourceSpans[0]!.scopeSpans[0]!.spans[0]!;
    s0.traceId = Buffer.from(TRACE, 'hex').toString('base64');
    s0.spanId = Buffer.from('cccccccccccccccc', 'hex').toString('base64');
    const res = await fetch(otlp.tracesUrl, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'content-encoding': 'gzip' },
      body: zlib.gzipSync(JSON.stringify(body)),
    });
    assert.equal(res.status, 200);
    assert.equal(otlp.spans[0]?.traceId, TRACE);
    assert.equal(otlp.spans[0]?.spanId, 'cccccccccccccccc');
    const bad = await fetch(otlp.tracesUrl, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{nope' });
    assert.equal(bad.status, 400);
    await assert.rejects(otlp.waitForSpan((s) => s.name === 'never', 100), /condition not met after 100 ms/);
  });

  test('the OpenTelemetry OTLP/HTTP exporter talks to it', async (t) => {
    let mods;
    try {
      mods = await Promise.all([import('@opentelemetry/sdk-trace'), import('@opentelemetry/exporter-trace-otlp-http'), import('@opentelemetry/resources')]);
    } catch {
      t.skip('OpenTelemetry SDK not installed');
      return;
    }
    const [sdk, exp, res] = mods;
    otlp.clear();
    const provider = new sdk.TracerProvider({
      resource: res.resourceFromAttributes({ 'service.name': 'tern-test' }),
      spanProcessors: [new sdk.SimpleSpanProcessor({ exporter: new exp.OTLPTraceExporter({ url: otlp.tracesUrl }) })],
    });
    const tracer = provider.getTracer('devkit-test');
    const parent = tracer.startSpan('parent');
    parent.setAttribute('tern.queue_id', 'Q9');
    parent.end();
    await provider.forceFlush();
    const span = await otlp.waitForSpan((s) => s.name === 'parent', 5000);
    assert.equal(span.serviceName, 'tern-test');
    assert.equal(span.attributes['tern.queue_id'], 'Q9');
    assert.equal(span.traceId, parent.spanContext().traceId);
    await provider.shutdown();
  });
});
