// The tracer services get when no exporter is configured (IdOnlyTracer):
// spans record nothing but carry ids, which propagate and appear in logs.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ROOT_CONTEXT, TraceFlags, createTraceState, type Span } from '@opentelemetry/api';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { context, IdOnlyTracer, trace } from '../src/index';

context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());

const HEX32 = /^[0-9a-f]{32}$/;
const HEX16 = /^[0-9a-f]{16}$/;
const parentCtx = trace.setSpanContext(ROOT_CONTEXT, {
  traceId: '0af7651916cd43dd8448eb211c80319c',
  spanId: 'b7ad6b7169203331',
  traceFlags: TraceFlags.NONE,
  isRemote: true,
  traceState: createTraceState('vendor=value'),
});

describe('IdOnlyTracer', () => {
  const tracer = new IdOnlyTracer();

  it('starts a trace at a root: valid, fresh ids, recording nothing', () => {
    const a = tracer.startSpan('root', {}, ROOT_CONTEXT);
    const b = tracer.startSpan('root', {}, ROOT_CONTEXT);
    const sa = a.spanContext();
    assert.match(sa.traceId, HEX32);
    assert.match(sa.spanId, HEX16);
    assert.notEqual(sa.traceId, b.spanContext().traceId);
    assert.notEqual(sa.spanId, b.spanContext().spanId);
    assert.equal(trace.isSpanContextValid(sa), true);
    assert.equal(a.isRecording(), false);
    assert.equal(sa.traceFlags, TraceFlags.NONE);
    a.setAttribute('k', 'v').end();
  });

  it('continues the parent trace with a span id of its own, keeping its trace state', () => {
    const s = tracer.startSpan('child', {}, parentCtx).spanContext();
    assert.equal(s.traceId, '0af7651916cd43dd8448eb211c80319c');
    assert.match(s.spanId, HEX16);
    assert.notEqual(s.spanId, 'b7ad6b7169203331');
    assert.equal(s.traceState?.get('vendor'), 'value');
  });

  it('starts a new trace under a parent when asked for a root', () => {
    const s = tracer.startSpan('new root', { root: true }, parentCtx).spanContext();
    assert.notEqual(s.traceId, '0af7651916cd43dd8448eb211c80319c');
    assert.match(s.traceId, HEX32);
  });

  it('startActiveSpan: every overload makes the span active inside fn and returns what fn returns', async () => {
    const seen: Array<[Span, string | undefined]> = [];
    const record = (span: Span) => {
      seen.push([span, trace.getSpan(context.active())?.spanContext().spanId]);
      return span.spanContext().spanId;
    };
    const r1 = context.with(parentCtx, () => tracer.startActiveSpan('a', record));
    const r2 = context.with(parentCtx, () => tracer.startActiveSpan('b', { attributes: { x: 1 } }, record));
    const r3 = tracer.startActiveSpan('c', {}, parentCtx, record);
    const r4 = await tracer.startActiveSpan('d', {}, parentCtx, async (span) => {
      await new Promise((r) => setImmediate(r));
      return record(span);
    });
    assert.deepEqual([r1, r2, r3, r4], seen.map(([span]) => span.spanContext().spanId));
    for (const [span, active] of seen) {
      assert.equal(active, span.spanContext().spanId, 'the span is the active one inside fn');
      assert.equal(span.spanContext().traceId, '0af7651916cd43dd8448eb211c80319c', 'under the parent given or active');
    }
    assert.equal(trace.getSpan(context.active()), undefined, 'nothing active after');
  });

  it('propagates: the traceparent injected inside a span names that span', () => {
    const propagator = new W3CTraceContextPropagator();
    tracer.startActiveSpan('publish', {}, parentCtx, (span) => {
      const carrier: Record<string, string> = {};
      propagator.inject(context.active(), carrier, { set: (c, k, v) => (c[k] = v) });
      assert.equal(carrier.traceparent, `00-0af7651916cd43dd8448eb211c80319c-${span.spanContext().spanId}-00`);
      assert.equal(carrier.tracestate, 'vendor=value');
    });
  });
});
