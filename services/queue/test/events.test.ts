import assert from 'node:assert/strict';
import { test } from 'node:test';
import { LifecycleEvents, LifecycleEventType } from '@tern/proto';
import { eventRows } from '../src/events';

const T = LifecycleEventType;
const input = (type: LifecycleEventType, queueId: string) => ({
  type,
  queueId,
  sender: 'a@b.test',
  recipient: 'c@d.test',
  trace: { traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01' },
});

test('one outbox row per event type, on tern.events.<type>, no span, unique message ids', () => {
  const rows = eventRows({ enabled: true, format: 'protobuf' }, [input(T.LIFECYCLE_EVENT_TYPE_DELIVERED, 'q1'), input(T.LIFECYCLE_EVENT_TYPE_DEFERRED, 'q2'), input(T.LIFECYCLE_EVENT_TYPE_DELIVERED, 'q3')]);
  assert.deepEqual(rows.map((r) => r.subject), ['tern.events.delivered', 'tern.events.deferred']);
  assert.ok(rows.every((r) => r.span === '' && r.trace === null));
  assert.equal(new Set(rows.map((r) => r.msgId)).size, 2);
  const delivered = LifecycleEvents.decode(rows[0]!.payload).events;
  assert.deepEqual(delivered.map((e) => e.queueId), ['q1', 'q3']);
  assert.equal(delivered[0]!.traceId, '0af7651916cd43dd8448eb211c80319c');
});

test('JSON format: the proto3 JSON of LifecycleEvents', () => {
  const [row] = eventRows({ enabled: true, format: 'json' }, [input(T.LIFECYCLE_EVENT_TYPE_BOUNCED, 'q9')]);
  const parsed = JSON.parse(Buffer.from(row!.payload).toString('utf8'));
  assert.equal(parsed.events[0].queueId, 'q9');
  assert.equal(parsed.events[0].type, 'LIFECYCLE_EVENT_TYPE_BOUNCED');
  assert.deepEqual(LifecycleEvents.fromJSON(parsed).events[0]!.type, T.LIFECYCLE_EVENT_TYPE_BOUNCED);
});

test('events off: no rows', () => {
  assert.deepEqual(eventRows({ enabled: false, format: 'protobuf' }, [input(T.LIFECYCLE_EVENT_TYPE_RECEIVED, 'q1')]), []);
});
