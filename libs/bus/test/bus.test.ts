import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { trace, context } from '@opentelemetry/api';
import { createTelemetry } from '@tern/telemetry';
import { Bus, SUBJECTS, jobSubject, type BusMessage } from '../src/index';

let server: ChildProcess;
let url: string;
const logger = pino({ level: 'silent' });

async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

before(async () => {
  const port = await freePort();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-bus-'));
  const bin = fs.existsSync('/usr/sbin/nats-server') ? '/usr/sbin/nats-server' : 'nats-server';
  server = spawn(bin, ['-js', '-a', '127.0.0.1', '-p', String(port), '-sd', dir], { stdio: 'ignore' });
  url = `nats://127.0.0.1:${port}`;
  for (let i = 0; i < 50; i++) {
    const ok = await new Promise<boolean>((r) => net.connect(port, '127.0.0.1').on('connect', function (this: net.Socket) { this.destroy(); r(true); }).on('error', () => r(false)));
    if (ok) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error('nats-server did not start');
});

after(() => server.kill('SIGKILL'));

test('topology is created idempotently, a republished message id is delivered once, and trace context travels in headers', async () => {
  const telemetry = createTelemetry({ service: 'bus-test', logLevel: 'silent' });
  const bus = await Bus.connect({ url, name: 'bus-test', logger });
  await bus.ensureTopology(['delivery']);
  await bus.ensureTopology(['delivery']); // second run from another "pod" changes nothing

  const span = telemetry.tracer.startSpan('publisher');
  const ctx = trace.setSpan(context.active(), span);
  const subject = jobSubject('Example.COM');
  assert.equal(subject, 'tern.jobs.example_com');
  const first = await bus.publish(subject, Buffer.from('job-1'), { msgId: 'job-1', ctx });
  const again = await bus.publish(subject, Buffer.from('job-1'), { msgId: 'job-1', ctx });
  assert.equal(again.duplicate, true);
  assert.equal(first.duplicate, false);
  await bus.publish(subject, Buffer.from('job-2'), { msgId: 'job-2', ctx });

  const seen: BusMessage[] = [];
  const done = new Promise<void>((resolve) => {
    const c = bus.consume(
      'delivery',
      async (m) => {
        seen.push(m);
        m.ack();
        if (seen.length === 2) void c.stop().then(resolve);
      },
      { concurrency: 4 },
    );
  });
  await done;
  assert.deepEqual(seen.map((m) => Buffer.from(m.data).toString()).sort(), ['job-1', 'job-2']);
  assert.equal(trace.getSpanContext(seen[0]!.ctx)?.traceId, span.spanContext().traceId);
  const info = await bus.jsm.streams.info('TERN_JOBS');
  assert.equal(info.state.messages, 0, 'work-queue stream is empty once acked');
  span.end();
  await bus.close();
  assert.ok(SUBJECTS.results);
});

test('a handler that throws gets its message redelivered', async () => {
  const bus = await Bus.connect({ url, name: 'bus-test-2', logger });
  await bus.ensureTopology(['bounce']);
  await bus.publish(SUBJECTS.reports, Buffer.from('r1'), { msgId: 'r1' });
  let calls = 0;
  await new Promise<void>((resolve) => {
    const c = bus.consume(
      'bounce',
      async (m) => {
        calls++;
        if (calls === 1) throw new Error('transient');
        assert.equal(m.deliveryCount, 2);
        m.ack();
        void c.stop().then(resolve);
      },
      { concurrency: 1, retryDelayMs: 50 },
    );
  });
  assert.equal(calls, 2);
  await bus.close();
});
