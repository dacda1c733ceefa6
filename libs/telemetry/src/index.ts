// Observability for every service (invariant I6): OpenTelemetry traces
// exported over OTLP/HTTP, metrics for Prometheus on /metrics, and pino JSON
// logs that carry the active trace and span ids.
import http from 'node:http';
import { context, createContextKey, metrics, ROOT_CONTEXT, propagation, trace, SpanStatusCode, TraceFlags, type Span, type SpanOptions, type Tracer, type Meter, type Context } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { AlwaysOffSampler, AlwaysOnSampler, BatchSpanProcessor, ParentBasedSampler, RandomIdGenerator, TracerProvider, type SpanProcessor } from '@opentelemetry/sdk-trace';
import { AggregationType, InstrumentType, MeterProvider } from '@opentelemetry/sdk-metrics';
import { createRequire } from 'node:module';
import type { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { PrometheusExporter } from '@opentelemetry/exporter-prometheus';
import { registerRuntimeMetrics } from './runtime-metrics';
import pino, { type Logger } from 'pino';

export type { Logger, Span, Tracer, Meter, Context };
export { context, propagation, trace, SpanStatusCode, ROOT_CONTEXT };

export interface TelemetryOptions {
  /** Service name without prefix, e.g. "queue"; traces use OTEL_SERVICE_NAME or `tern-<service>`. */
  service: string;
  logLevel: string;
  /** OTLP/HTTP base endpoint; traces are not exported when absent. */
  otlpEndpoint?: string;
  serviceNameOverride?: string;
  instanceId?: string;
}

export interface Telemetry {
  logger: Logger;
  tracer: Tracer;
  meter: Meter;
  /** Serves /metrics, /healthz (liveness) and /readyz (readiness) until closed. */
  serveMetrics(host: string, port: number, isReady: () => boolean): Promise<http.Server>;
  shutdown(): Promise<void>;
}

let installed = false;

/** Bucket bounds of every histogram in seconds: from half a millisecond (a cached policy check) to five minutes (a slow delivery). */
export const SECONDS_BUCKETS: readonly number[] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];

export function createTelemetry(opts: TelemetryOptions): Telemetry {
  const serviceName = opts.serviceNameOverride ?? `tern-${opts.service}`;
  const resource = resourceFromAttributes({
    'service.name': serviceName,
    'service.namespace': 'tern',
    'service.instance.id': opts.instanceId ?? `${process.pid}`,
  });

  const spanProcessors: SpanProcessor[] = [];
  if (opts.otlpEndpoint) {
    const url = opts.otlpEndpoint.replace(/\/+$/, '') + '/v1/traces';
    // Required here, only when an endpoint is set: the exporter and its OTLP
    // transformer are 59 modules and 0.5 MB of heap a process without one
    // would keep for nothing.
    const { OTLPTraceExporter: Exporter } = createRequire(__filename)('@opentelemetry/exporter-trace-otlp-http') as { OTLPTraceExporter: typeof OTLPTraceExporter };
    spanProcessors.push(
      new BatchSpanProcessor({ exporter: new Exporter({ url }), scheduledDelayMillis: 500, maxQueueSize: 8192 }),
    );
  }
  // Without an exporter nothing would ever read a recorded span: record
  // none. Spans still get ids, which propagate (traceparent in gRPC metadata,
  // NATS headers and queue rows) and appear in the logs, so log lines of one
  // message still join up; only the span bookkeeping (attributes, events,
  // timing) is skipped.
  //
  // With an exporter, a span follows its parent's decision and a root is
  // sampled: a call carrying a not-sampled traceparent (a background poll,
  // see untraced()) records nothing on the server either, rather than
  // starting a root trace there.
  const sampler = spanProcessors.length ? new ParentBasedSampler({ root: new AlwaysOnSampler() }) : new AlwaysOffSampler();
  const tracerProvider = new TracerProvider({ resource, spanProcessors, sampler });
  // The exporter serves nothing itself: /metrics is routed by our own server,
  // next to the health endpoints.
  const prometheus = new PrometheusExporter({ preventServerStart: true });
  const meterProvider = new MeterProvider({
    resource,
    readers: [prometheus],
    // Durations are recorded in seconds (unit "s"); the SDK's default bounds
    // (0, 5, 10, ... 10000) are for milliseconds and put every observation
    // in the first bucket.
    views: [
      {
        instrumentType: InstrumentType.HISTOGRAM,
        instrumentUnit: 's',
        aggregation: { type: AggregationType.EXPLICIT_BUCKET_HISTOGRAM, options: { boundaries: [...SECONDS_BUCKETS] } },
      },
    ],
  });

  if (!installed) {
    // Globals: one provider per process. Tests that create several telemetry
    // objects in one process share the first.
    context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
    propagation.setGlobalPropagator(new W3CTraceContextPropagator());
    trace.setGlobalTracerProvider(tracerProvider);
    metrics.setGlobalMeterProvider(meterProvider);
    installed = true;
  }

  // Synchronous writes (pino's default): one write(2) per line from the
  // event loop. The asynchronous destination handed each write to a libuv
  // pool thread and back (a futex wake, two context switches and an eventfd
  // wake-up per line at a few hundred lines a second), which cost more CPU
  // than the write itself; a line also reaches stdout before the next one is
  // made, so a crash loses none. A stdout that stops being read stalls the
  // service rather than growing its memory without bound (I4).
  // shutdown() flushes either way.
  const destination = pino.destination({ dest: 1, sync: true });
  const logger = pino({
    level: opts.logLevel,
    base: { service: opts.service, pid: process.pid },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label) => ({ level: label }) },
    // Every line logged inside a span carries its ids, so logs join traces;
    // background work (untraced()) has no trace to join.
    mixin() {
      const active = context.active();
      if (active.getValue(UNTRACED) === true) return {};
      const span = trace.getSpan(active);
      if (!span) return {};
      const sc = span.spanContext();
      return { trace_id: sc.traceId, span_id: sc.spanId };
    },
  }, destination);

  const tracer = spanProcessors.length ? tracerProvider.getTracer(serviceName) : new IdOnlyTracer();
  const meter = meterProvider.getMeter(serviceName);
  registerRuntimeMetrics(meter);

  return {
    logger,
    tracer,
    meter,
    serveMetrics(host, port, isReady) {
      const server = http.createServer((req, res) => {
        const path = (req.url ?? '/').split('?')[0];
        if (path === '/metrics') return prometheus.getMetricsRequestHandler(req, res);
        if (path === '/healthz') {
          res.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n');
          return;
        }
        if (path === '/readyz') {
          const ready = isReady();
          res.writeHead(ready ? 200 : 503, { 'content-type': 'text/plain' }).end(ready ? 'ready\n' : 'not ready\n');
          return;
        }
        res.writeHead(404).end();
      });
      return new Promise((resolve, reject) => {
        server.once('error', reject);
        server.listen(port, host, () => resolve(server));
      });
    },
    async shutdown() {
      await Promise.allSettled([tracerProvider.shutdown(), meterProvider.shutdown()]);
      destination.flushSync();
    },
  };
}

/**
 * The tracer when nothing records spans (no exporter): every span is a
 * non-recording span with a fresh span id under its parent's trace id (a new
 * trace id at a root), as the SDK's tracer with an always-off sampler makes
 * them, without the rest of the SDK's per-span work (copying and cleaning
 * the attributes, asking the sampler, counting the span in its own metrics),
 * a cost on every span for nothing (docs/performance.md).
 */
export class IdOnlyTracer implements Tracer {
  private readonly ids = new RandomIdGenerator();

  startSpan(_name: string, options?: SpanOptions, ctx: Context = context.active()): Span {
    const parent = options?.root ? undefined : trace.getSpanContext(ctx);
    const valid = parent !== undefined && trace.isSpanContextValid(parent);
    return trace.wrapSpanContext({
      traceId: valid ? parent.traceId : this.ids.generateTraceId(),
      spanId: this.ids.generateSpanId(),
      traceFlags: TraceFlags.NONE,
      traceState: valid ? parent.traceState : undefined,
    });
  }

  startActiveSpan<F extends (span: Span) => unknown>(name: string, fn: F): ReturnType<F>;
  startActiveSpan<F extends (span: Span) => unknown>(name: string, options: SpanOptions, fn: F): ReturnType<F>;
  startActiveSpan<F extends (span: Span) => unknown>(name: string, options: SpanOptions, ctx: Context, fn: F): ReturnType<F>;
  startActiveSpan<F extends (span: Span) => unknown>(name: string, a: SpanOptions | F, b?: Context | F, c?: F): ReturnType<F> {
    const fn = (typeof a === 'function' ? a : typeof b === 'function' ? b : c) as F;
    const options = typeof a === 'function' ? undefined : a;
    const parent = typeof b === 'object' ? b : context.active();
    const span = this.startSpan(name, options, parent);
    return context.with(trace.setSpan(parent, span), fn as (span: Span) => ReturnType<F>, undefined, span);
  }
}

const UNTRACED = createContextKey('tern.untraced');
const backgroundIds = new RandomIdGenerator();

/**
 * The context for work done for no message: a background poll, reload,
 * scheduler or housekeeping pass, a long-lived stream shared by messages.
 * Its active span is a not-sampled one with fresh ids, so spans started in it
 * record nothing, the calls it makes carry a not-sampled `traceparent` (the
 * server's ParentBased sampler then records nothing either, where a call
 * without one would start a root trace there), and log lines made in it carry
 * no trace id. Suppressing tracing (@opentelemetry/core suppressTracing)
 * would send no traceparent at all, and the server would start a root.
 */
export function untracedContext(): Context {
  const sc = { traceId: backgroundIds.generateTraceId(), spanId: backgroundIds.generateSpanId(), traceFlags: TraceFlags.NONE };
  return trace.setSpanContext(ROOT_CONTEXT, sc).setValue(UNTRACED, true);
}

/** Runs `fn` in a fresh untracedContext() (background work: no span anywhere, no trace id in its logs). */
export function untraced<T>(fn: () => T): T {
  return context.with(untracedContext(), fn);
}

/**
 * Runs `fn` inside a new active span; records an exception and sets ERROR on
 * throw. The span ends when `fn` settles.
 */
export async function withSpan<T>(
  tracer: Tracer,
  name: string,
  attributes: Record<string, string | number | boolean | undefined>,
  fn: (span: Span) => Promise<T>,
  parent?: Context,
): Promise<T> {
  const clean: Record<string, string | number | boolean> = {};
  for (const [k, v] of Object.entries(attributes)) if (v !== undefined) clean[k] = v;
  return tracer.startActiveSpan(name, { attributes: clean }, parent ?? context.active(), async (span) => {
    try {
      return await fn(span);
    } catch (err) {
      span.recordException(err as Error);
      span.setStatus({ code: SpanStatusCode.ERROR, message: (err as Error).message });
      throw err;
    } finally {
      span.end();
    }
  });
}

/** W3C trace context of the active span as a carrier (for headers and DB rows). */
export function injectContext(ctx: Context = context.active()): Record<string, string> {
  const carrier: Record<string, string> = {};
  propagation.inject(ctx, carrier);
  return carrier;
}

/** A context continuing the trace in `carrier` (empty carrier: the root context). */
export function extractContext(carrier: Record<string, string | undefined>): Context {
  return propagation.extract(context.active(), carrier, {
    get: (c, key) => c[key],
    keys: (c) => Object.keys(c),
  });
}
export { enumLabel, OTHER_LABEL, TopLabels } from './top-labels';
