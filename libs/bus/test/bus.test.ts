import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { trace, context } from '@opentelemetry/api';
import { createTelemetry } from '@tern/telemetry';
import { startNats, type NatsServerHandle } from '@tern/devkit';
import { headers as natsHeaders } from '@nats-io/nats-core';
import { DiscardPolicy, RetentionPolicy } from '@nats-io/jetstream';
import { Bus, JetStreamPublisher, STREAMS, STREAMS_MAX_BYTES, SUBJECTS, jobSubject, natsServers, type BusMessage } from '../src/index';

let nats: NatsServerHandle;
let url: string;
const logger = pino({ level: 'silent' });

/** Fails instead of hanging when a message never arrives. */
function within<T>(ms: number, what: string, p: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_r, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: nothing within ${ms} ms`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

// A private nats-server; devkit checks that it is ours and has JetStream
// (a bare port probe can meet another test's listener on a reused port).
before(async () => {
  nats = await startNats();
  url = nats.url;
});

// A failed assertion skips a test's own close; an open connection to a
// stopped server would keep reconnecting and the test process alive.
const open: Bus[] = [];
async function connect(name: string): Promise<Bus> {
  const bus = await Bus.connect({ url, name, logger });
  open.push(bus);
  return bus;
}

after(async () => {
  await Promise.allSettled(open.map((b) => b.close()));
  await nats.close();
});

test('topology is created idempotently, a republished message id is delivered once, and trace context travels in headers', async () => {
  const telemetry = createTelemetry({ service: 'bus-test', logLevel: 'silent' });
  const bus = await connect('bus-test');
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
  await within(20_000, 'consuming two jobs', done);
  assert.deepEqual(seen.map((m) => Buffer.from(m.data).toString()).sort(), ['job-1', 'job-2']);
  assert.equal(trace.getSpanContext(seen[0]!.ctx)?.traceId, span.spanContext().traceId);
  // Headers and delivery count are read on demand, after the handler too.
  assert.deepEqual(seen.map((m) => m.msgId).sort(), ['job-1', 'job-2']);
  assert.deepEqual(seen.map((m) => m.deliveryCount), [1, 1]);
  assert.equal(seen[0]!.ctx, seen[0]!.ctx, 'the trace context is extracted once');
  // Acks are asynchronous: the server removes the messages shortly after.
  let left = -1;
  for (let i = 0; i < 100 && left !== 0; i++) {
    if (i) await new Promise((r) => setTimeout(r, 50));
    left = (await bus.jsm.streams.info('TERN_JOBS')).state.messages;
  }
  assert.equal(left, 0, 'work-queue stream is empty once acked');
  span.end();
  await bus.close();
  assert.ok(SUBJECTS.results);
});

test('a handler that throws gets its message redelivered', async () => {
  const bus = await connect('bus-test-2');
  await bus.ensureTopology(['bounce']);
  await bus.publish(SUBJECTS.reports, Buffer.from('r1'), { msgId: 'r1' });
  let calls = 0;
  const redelivered = new Promise<void>((resolve) => {
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
  await within(20_000, 'redelivery', redelivered);
  assert.equal(calls, 2);
  await bus.close();
});

test('stop() lets the running handler finish and hands back fetched jobs at once (no wait for the ack timeout)', async () => {
  const bus = await connect('bus-test-3');
  await bus.ensureTopology(['delivery']);
  const ids = ['h1', 'h2', 'h3', 'h4', 'h5', 'h6'];
  for (const id of ids) await bus.publish(jobSubject('handback.test'), Buffer.from(id), { msgId: `handback-${id}` });
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  let started!: () => void;
  const firstStarted = new Promise<void>((r) => (started = r));
  const finished: string[] = [];
  const a = bus.consume(
    'delivery',
    async (m) => {
      started();
      await gate;
      finished.push(Buffer.from(m.data).toString());
      m.ack();
    },
    { concurrency: 1 },
  );
  await within(10_000, 'the first job started', firstStarted);
  const stopping = a.stop();
  release();
  await stopping;
  assert.equal(finished.length, 1, 'the job in hand was finished, no other was started');

  // The delivery consumer's ack wait is minutes: only a hand-back brings the rest this soon.
  const other = await connect('bus-test-4');
  const seen: string[] = [];
  let b: ReturnType<Bus['consume']> | undefined;
  try {
    await within(
      10_000,
      'the handed-back jobs at another consumer',
      new Promise<void>((resolve) => {
        b = other.consume(
          'delivery',
          async (m) => {
            seen.push(Buffer.from(m.data).toString());
            m.ack();
            if (seen.length === ids.length - 1) resolve();
          },
          { concurrency: 4 },
        );
      }),
    );
    // Late duplicates would show here: a job handed back must run once.
    await new Promise((r) => setTimeout(r, 300));
  } finally {
    await b?.stop();
  }
  assert.equal(new Set(seen).size, seen.length, `no job twice: ${seen.join(', ')}`);
  assert.deepEqual([...finished, ...seen].sort(), ids);
});


test('publish: the stream stores it and says so, and a subject no stream takes, a stream that refuses and a missing ack each fail with their cause', async () => {
  const bus = await connect('bus-test-5');
  await bus.ensureTopology([]);
  // Many at once: every ack finds its own publish (a token per publish, one subscription).
  const acks = await Promise.all(Array.from({ length: 200 }, (_, i) => bus.publish(SUBJECTS.reports, Buffer.from(`p${i}`), { msgId: `pub-${i}` })));
  assert.equal(new Set(acks.map((a) => a.seq)).size, 200, 'each publish got its own sequence');
  assert.ok(acks.every((a) => a.stream === 'TERN_REPORTS' && a.duplicate === false));
  const again = await bus.publish(SUBJECTS.reports, Buffer.from('p7'), { msgId: 'pub-7' });
  assert.equal(again.duplicate, true);
  assert.equal(again.seq, acks[7]!.seq, 'a duplicate is acked with the stored message');

  await assert.rejects(bus.publish('tern.nowhere', Buffer.from('x'), { msgId: 'n1' }), /tern\.nowhere: no stream takes this subject \(503/);

  await bus.jsm.streams.add({ name: 'BUS_TEST_FULL', subjects: ['bus.test.full'], max_msgs: 1, discard: DiscardPolicy.New });
  await bus.publish('bus.test.full', Buffer.from('1'), { msgId: 'f1' });
  await assert.rejects(bus.publish('bus.test.full', Buffer.from('2'), { msgId: 'f2' }), /bus\.test\.full refused: maximum messages exceeded \(code 503, err_code 10077\)/);
  await bus.jsm.streams.delete('BUS_TEST_FULL');

  // A plain subscriber takes the subject and never answers: the ack times out, and is not waited for forever.
  const sub = bus.nc.subscribe('bus.test.silent');
  const publisher = new JetStreamPublisher(bus.nc, 200);
  try {
    await assert.rejects(publisher.publish('bus.test.silent', Buffer.from('x'), natsHeaders()), /bus\.test\.silent: no PubAck within 200 ms/);
    assert.equal(publisher.inflight, 0);
  } finally {
    publisher.close();
    sub.unsubscribe();
  }
  await bus.close();
});

test('every work-queue stream refuses publishes past its bound rather than dropping stored messages, also one created before with discard old; the events log drops its oldest', async () => {
  const bus = await connect('bus-test-discard');
  // As an older release created it: discard old.
  await bus.jsm.streams.add({ name: STREAMS.reports.name, subjects: [...STREAMS.reports.subjects], retention: RetentionPolicy.Workqueue, discard: DiscardPolicy.Old, max_msgs: 5 }).catch(async () => {
    await bus.jsm.streams.update(STREAMS.reports.name, { subjects: [...STREAMS.reports.subjects], discard: DiscardPolicy.Old, max_msgs: 5 });
  });
  await bus.ensureTopology([]);
  for (const spec of Object.values(STREAMS)) {
    const info = await bus.jsm.streams.info(spec.name);
    const log = 'log' in spec;
    assert.equal(info.config.discard, log ? DiscardPolicy.Old : DiscardPolicy.New, `${spec.name}: discard`);
    assert.equal(info.config.retention, log ? RetentionPolicy.Limits : RetentionPolicy.Workqueue, `${spec.name}: retention`);
    assert.equal(info.config.max_msgs, spec.maxMessages, `${spec.name}: max_msgs`);
  }
  // The bound holds: with the stream lowered to 2 messages, the third publish fails and the first two stay.
  await bus.jsm.streams.purge(STREAMS.reports.name);
  await bus.jsm.streams.update(STREAMS.reports.name, { subjects: [...STREAMS.reports.subjects], max_msgs: 2 });
  await bus.publish(SUBJECTS.reports, Buffer.from('r1'), { msgId: 'discard-1' });
  await bus.publish(SUBJECTS.reports, Buffer.from('r2'), { msgId: 'discard-2' });
  await assert.rejects(bus.publish(SUBJECTS.reports, Buffer.from('r3'), { msgId: 'discard-3' }), /maximum messages exceeded/);
  const kept = await bus.jsm.streams.info(STREAMS.reports.name);
  assert.equal(kept.state.messages, 2);
  assert.equal(kept.state.first_seq, kept.state.last_seq - 1, 'the first two are the ones kept');
  await bus.jsm.streams.purge(STREAMS.reports.name);
  await bus.ensureTopology([]); // back to the real bound for the tests after this one
});

test('a NATS server whose file store is smaller than the streams reserve: the error names the stream, the sizes and the setting', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-nats-small-'));
  const conf = path.join(dir, 'small.conf');
  fs.writeFileSync(conf, 'jetstream { max_file_store: 1GB }\n');
  const small = await startNats({ args: ['-c', conf] });
  const bus = await Bus.connect({ url: small.url, name: 'bus-small', logger });
  try {
    await assert.rejects(bus.ensureTopology(), (err: Error) => {
      assert.match(err.message, /NATS JetStream cannot reserve 4 GiB for stream TERN_JOBS: .*insufficient storage resources/);
      assert.match(err.message, /reserve 8 GiB of file storage together: raise the server's jetstream max_file_store/);
      assert.equal(STREAMS_MAX_BYTES, 8 * 1024 ** 3);
      return true;
    });
  } finally {
    await bus.close();
    await small.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('credentials in TERN_NATS_URL log in: user and password, or a token (nats.js takes them only as options)', async () => {
  assert.deepEqual(natsServers('nats://tern:p%40ss@nats.example:4222'), { servers: ['nats://nats.example:4222'], user: 'tern', pass: 'p@ss' });
  assert.deepEqual(natsServers('nats://s3cret@a:4222, nats://b:4222'), { servers: ['nats://a:4222', 'nats://b:4222'], token: 's3cret' });
  assert.deepEqual(natsServers('nats://a:4222'), { servers: ['nats://a:4222'] });
  const secured = await startNats({ args: ['--user', 'tern', '--pass', 'right-password'] });
  try {
    // Without the credentials as options the server refuses each attempt and connect() keeps retrying: bounded here.
    const bus = await Promise.race([
      Bus.connect({ url: `nats://tern:right-password@${secured.host}:${secured.port}`, name: 'bus-auth', logger }),
      new Promise<never>((_, reject) => setTimeout(() => reject(new Error('no connection within 10 s: the credentials in the URL were not used')), 10_000).unref()),
    ]);
    await bus.ensureTopology([]);
    await bus.close();
  } finally {
    await secured.close();
  }
});
