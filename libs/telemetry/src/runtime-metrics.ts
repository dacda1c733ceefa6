// Process and Node runtime metrics every service exposes: CPU, memory, open
// file descriptors, event-loop delay and garbage collection. Everything is
// read when /metrics is scraped; the event-loop and GC observers are one
// per process, whatever number of meters (tests run several services in one
// process).
import fs from 'node:fs';
import { monitorEventLoopDelay, PerformanceObserver } from 'node:perf_hooks';
import { constants } from 'node:perf_hooks';
import type { Meter } from '@opentelemetry/api';

const GC_KINDS: Record<number, string> = {
  [constants.NODE_PERFORMANCE_GC_MAJOR]: 'major',
  [constants.NODE_PERFORMANCE_GC_MINOR]: 'minor',
  [constants.NODE_PERFORMANCE_GC_INCREMENTAL]: 'incremental',
  [constants.NODE_PERFORMANCE_GC_WEAKCB]: 'weakcb',
};

const LOOP_RESOLUTION_MS = 10;
/** The histogram's samples include its own timer period; the delay is what exceeds it. */
const loopDelaySeconds = (ns: number) => Math.max(0, ns / 1e9 - LOOP_RESOLUTION_MS / 1000);

interface ProcessObservers {
  loop: ReturnType<typeof monitorEventLoopDelay>;
  gc: Map<string, { runs: number; seconds: number }>;
}
let observers: ProcessObservers | undefined;

function processObservers(): ProcessObservers {
  if (observers) return observers;
  const loop = monitorEventLoopDelay({ resolution: LOOP_RESOLUTION_MS });
  loop.enable();
  // Every kind from zero, so that each series exists before its first collection
  // (a service with little garbage may not have had one when first scraped).
  const gc = new Map<string, { runs: number; seconds: number }>(Object.values(GC_KINDS).map((kind) => [kind, { runs: 0, seconds: 0 }]));
  const obs = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      const kind = GC_KINDS[((e as { detail?: unknown }).detail as { kind?: number } | undefined)?.kind ?? -1] ?? 'other';
      const s = gc.get(kind) ?? { runs: 0, seconds: 0 };
      s.runs++;
      s.seconds += e.duration / 1000;
      gc.set(kind, s);
    }
  });
  obs.observe({ entryTypes: ['gc'] });
  observers = { loop, gc };
  return observers;
}

function openFds(): number | undefined {
  try {
    return fs.readdirSync('/proc/self/fd').length;
  } catch {
    return undefined;
  }
}

export function registerRuntimeMetrics(meter: Meter): void {
  const { loop, gc } = processObservers();
  const startSeconds = Math.round((Date.now() - performance.now()) / 1000);
  meter.createObservableCounter('process_cpu_seconds_total', { description: 'User and system CPU time of the process, seconds' }).addCallback((r) => {
    const u = process.cpuUsage();
    r.observe((u.user + u.system) / 1e6);
  });
  meter.createObservableGauge('process_resident_memory_bytes', { description: 'Resident set size, bytes' }).addCallback((r) => r.observe(process.memoryUsage.rss()));
  meter.createObservableGauge('process_start_time_seconds', { description: 'Start of the process, seconds since the Unix epoch' }).addCallback((r) => r.observe(startSeconds));
  meter.createObservableGauge('process_open_fds', { description: 'Open file descriptors' }).addCallback((r) => {
    const n = openFds();
    if (n !== undefined) r.observe(n);
  });
  meter.createObservableGauge('nodejs_heap_used_bytes', { description: 'V8 heap in use, bytes' }).addCallback((r) => r.observe(process.memoryUsage().heapUsed));
  meter.createObservableGauge('nodejs_heap_total_bytes', { description: 'V8 heap reserved, bytes' }).addCallback((r) => r.observe(process.memoryUsage().heapTotal));
  meter.createObservableGauge('nodejs_external_memory_bytes', { description: 'Memory of C++ objects bound to JavaScript (Buffers included), bytes' }).addCallback((r) => r.observe(process.memoryUsage().external));
  // Delay of the event loop since the previous scrape: p50, p99 and max.
  meter.createObservableGauge('nodejs_eventloop_delay_seconds', { description: 'Event-loop delay since the previous scrape, by quantile (0.5, 0.99, 1 = max), seconds' }).addCallback((r) => {
    if (loop.count > 0) {
      r.observe(loopDelaySeconds(loop.percentile(50)), { quantile: '0.5' });
      r.observe(loopDelaySeconds(loop.percentile(99)), { quantile: '0.99' });
      r.observe(loopDelaySeconds(loop.max), { quantile: '1' });
    }
    loop.reset();
  });
  meter.createObservableCounter('nodejs_gc_runs_total', { description: 'Garbage collections, by kind' }).addCallback((r) => {
    for (const [kind, s] of gc) r.observe(s.runs, { kind });
  });
  meter.createObservableCounter('nodejs_gc_seconds_total', { description: 'Time spent in garbage collection, by kind, seconds' }).addCallback((r) => {
    for (const [kind, s] of gc) r.observe(s.seconds, { kind });
  });
}
