// encodeEnqueueBatch (libs/proto/src/bodies.ts) writes EnqueueMessage.body
// by hand after the rest of each message: the generated decoder must read
// back the request the generated encoder would have written, whatever the
// bodies' lengths (one- to three-byte length prefixes), bytes and count.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { EnqueueBatchRequest, EnqueueMessage, EnqueueStreamRequest, appendBytesField, decodeEnqueueBatch, decodeEnqueueStream, encodeEnqueueBatch, encodeEnqueueStream, type EnqueueMessageParts } from '../src/index';

function body(len: number, seed: number): Buffer {
  const b = Buffer.alloc(len);
  for (let i = 0; i < len; i++) b[i] = (i * 131 + seed) & 0xff; // every byte value, 8-bit included
  return b;
}

function message(n: number, len: number) {
  return EnqueueMessage.fromPartial({
    header: { envelope: { sender: `s${n}@example.org` }, recipients: [{ address: `r${n}@example.net` }], idempotencyKey: `k${n}` },
    body: body(len, n),
    commit: { size: len, prepend: n % 3 ? Buffer.from(`X-Check-${n}: pass\r\n`) : Buffer.alloc(0) },
    trace: n % 2 ? { traceparent: `00-${'1'.repeat(32)}-${'2'.repeat(16)}-01` } : {},
  });
}

test('an EnqueueBatch request reads back as the generated encoding would, for every body length', () => {
  const lengths = [0, 1, 127, 128, 300, 16_383, 16_384, 70_000, 2_097_152];
  const request = EnqueueBatchRequest.fromPartial({ messages: lengths.map((len, n) => message(n, len)) });
  const out = encodeEnqueueBatch(request);
  const back = EnqueueBatchRequest.decode(out);
  assert.equal(back.messages.length, lengths.length);
  back.messages.forEach((m, n) => {
    assert.equal(Buffer.compare(Buffer.from(m.body), request.messages[n]!.body), 0, `body ${n} read back`);
    assert.deepEqual({ ...m, body: undefined }, { ...request.messages[n]!, body: undefined }, `message ${n}: the other fields`);
  });
  assert.equal(out.length, Buffer.from(EnqueueBatchRequest.encode(request).finish()).length, 'as long as the generated encoding');
  assert.equal(encodeEnqueueBatch(EnqueueBatchRequest.fromPartial({ messages: [] })).length, 0);
});

test('appendBytesField: a field after a message, none for an empty value', () => {
  const head = EnqueueMessage.encode(EnqueueMessage.fromPartial({ commit: { size: 3 } })).finish();
  const m = EnqueueMessage.decode(appendBytesField(head, 2, Buffer.from('abc')));
  assert.equal(Buffer.from(m.body).toString(), 'abc');
  assert.equal(m.commit?.size, 3);
  assert.equal(appendBytesField(head, 2, Buffer.alloc(0)), head);
  assert.equal(appendBytesField(head, 2, undefined), head);
});

test('decodeEnqueueBatch reads what either encoder wrote, each body a view into the request (no copy)', () => {
  const lengths = [0, 1, 300, 16_384, 70_000];
  const request = EnqueueBatchRequest.fromPartial({ messages: lengths.map((len, n) => message(n, len)) });
  for (const wire of [encodeEnqueueBatch(request), Buffer.from(EnqueueBatchRequest.encode(request).finish())]) {
    const back = decodeEnqueueBatch(wire);
    assert.deepEqual(EnqueueBatchRequest.toJSON(back), EnqueueBatchRequest.toJSON(EnqueueBatchRequest.decode(wire)), 'as the generated decoder reads it');
    back.messages.forEach((m, n) => {
      assert.equal(Buffer.compare(m.body, request.messages[n]!.body), 0, `body ${n}`);
      if (m.body.length) assert.equal(m.body.buffer, wire.buffer, `body ${n} is a view into the request`);
    });
  }
  // The generated encoder puts the body before commit and trace: those are read too (above);
  // unknown fields are skipped.
  const withUnknown = Buffer.concat([encodeEnqueueBatch(request), Buffer.from([0x98, 0x01, 0x05])]); // field 19, varint 5
  assert.equal(decodeEnqueueBatch(withUnknown).messages.length, lengths.length);
  assert.deepEqual(decodeEnqueueBatch(Buffer.alloc(0)), { messages: [] });
});

test('a body given as pieces (bodyParts) encodes as the same body given whole', () => {
  const whole = [message(1, 70_000), message(2, 0), message(3, 300)];
  const pieces: EnqueueMessageParts[] = whole.map((m) => {
    const b = m.body;
    const cuts = b.length ? [0, 1, Math.floor(b.length / 3), b.length - 1, b.length] : [0, 0];
    return { ...m, body: Buffer.alloc(0), bodyParts: cuts.slice(1).map((end, i) => b.subarray(cuts[i], end)) };
  });
  const a = encodeEnqueueBatch(EnqueueBatchRequest.fromPartial({ messages: whole }));
  const b = encodeEnqueueBatch({ messages: pieces });
  assert.equal(Buffer.compare(a, b), 0);
  assert.equal(Buffer.compare(decodeEnqueueBatch(b).messages[0]!.body, whole[0]!.body), 0);
});

test('an EnqueueStream request: its seq and messages read back by the generated decoder and by decodeEnqueueStream', () => {
  const lengths = [0, 300, 70_000];
  for (const seq of [0, 1, 127, 128, 2 ** 40]) {
    const request = EnqueueStreamRequest.fromPartial({ seq, messages: lengths.map((len, n) => message(n, len)) });
    const wire = encodeEnqueueStream(request);
    assert.deepEqual(EnqueueStreamRequest.toJSON(EnqueueStreamRequest.decode(wire)), EnqueueStreamRequest.toJSON(request), `seq ${seq}: generated decoder`);
    const back = decodeEnqueueStream(wire);
    assert.equal(back.seq, seq);
    assert.deepEqual(EnqueueStreamRequest.toJSON(back), EnqueueStreamRequest.toJSON(request), `seq ${seq}: decodeEnqueueStream`);
    if (seq) assert.equal(back.messages[2]!.body.buffer, wire.buffer, 'bodies are views into the request');
    // What the generated encoder writes (seq after the messages) reads back the same.
    assert.deepEqual(decodeEnqueueStream(Buffer.from(EnqueueStreamRequest.encode(request).finish())), back);
  }
  assert.deepEqual(decodeEnqueueStream(encodeEnqueueStream({ seq: 0, messages: [] })), { seq: 0, messages: [] });
});
