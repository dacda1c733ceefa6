// Background work (untraced) with an exporter configured: its spans record
// nothing, the calls it makes carry a not-sampled traceparent, the server
// that continues from one records nothing either (a call without any
// traceparent still starts a recorded root there), and its log lines carry
// no trace id, while a message's work is recorded and logged with its ids.
// In a child process: createTelemetry installs process-wide globals.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { test } from 'node:test';

test('untraced: no recording client or server side, a not-sampled traceparent, no trace id in its logs', () => {
  const entry = path.join(__dirname, '..', 'src', 'index.ts');
  const script = `
    const { createTelemetry, untraced, injectContext, extractContext, context, trace } = require(${JSON.stringify(entry)});
    // An exporter is configured (nothing listens there; the process exits before any export).
    const t = createTelemetry({ service: 'untraced-test', logLevel: 'info', otlpEndpoint: 'http://127.0.0.1:9' });
    const result = {};
    untraced(() => {
      const poll = t.tracer.startSpan('poll');
      const carrier = injectContext(trace.setSpan(context.active(), poll));
      const server = t.tracer.startSpan('server', {}, extractContext(carrier));
      t.logger.info({ event: 'background' }, 'a poll');
      Object.assign(result, { pollRecording: poll.isRecording(), traceparent: carrier.traceparent, serverRecording: server.isRecording() });
    });
    result.bareCallRecording = t.tracer.startSpan('server', {}, extractContext({})).isRecording();
    const message = t.tracer.startSpan('smtp.session');
    result.messageRecording = message.isRecording();
    result.messageTraceId = message.spanContext().traceId;
    context.with(trace.setSpan(context.active(), message), () => t.logger.info({ event: 'message' }, 'for a message'));
    process.stdout.write(JSON.stringify({ result }) + '\\n', () => process.exit(0));
  `;
  const r = spawnSync(process.execPath, ['--import', 'tsx', '-e', script], { encoding: 'utf8', timeout: 30_000 });
  assert.equal(r.status, 0, r.stderr);
  const lines = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
  const result = lines.find((l) => l.result)?.result as Record<string, unknown>;
  assert.equal(result.pollRecording, false, 'a span of background work records nothing');
  assert.match(String(result.traceparent), /^00-[0-9a-f]{32}-[0-9a-f]{16}-00$/, 'its calls carry a not-sampled traceparent');
  assert.equal(result.serverRecording, false, 'the server continuing from it records nothing');
  assert.equal(result.bareCallRecording, true, 'a call with no traceparent at all starts a recorded root');
  assert.equal(result.messageRecording, true, 'a message\'s span records');
  const background = lines.find((l) => l.event === 'background')!;
  assert.equal(background.trace_id, undefined, 'a background log line carries no trace id');
  const message = lines.find((l) => l.event === 'message')!;
  assert.equal(message.trace_id, result.messageTraceId, 'a message\'s log line carries its trace id');
});
