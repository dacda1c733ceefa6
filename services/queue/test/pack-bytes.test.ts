// packBytes (services/queue/src/db.ts): byte strings as one parameter plus
// offsets and lengths; the bodies of one request go as the piece of it that
// spans them, without a copy, when little else lies between them.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { packBytes } from '../src/db';

/** What Postgres reads for part i: substring(packed from offsets[i] + 1 for lengths[i]). */
const partsOf = (p: ReturnType<typeof packBytes>) => p.offsets.map((o, i) => p.packed.subarray(o, o + p.lengths[i]!));

test('views into one buffer with little between them: the spanning piece, not a copy', () => {
  const request = Buffer.alloc(100_000, 7);
  request.fill(1, 100, 40_100);
  request.fill(2, 40_300, 80_300);
  const bodies = [request.subarray(100, 40_100), request.subarray(40_300, 80_300)];
  const p = packBytes(bodies);
  assert.equal(p.packed.buffer, request.buffer, 'no copy');
  assert.equal(p.packed.length, 80_200);
  assert.deepEqual(partsOf(p), bodies);
});

test('a single part is sent as it is', () => {
  const request = Buffer.alloc(70_000, 3);
  const p = packBytes([request.subarray(10, 69_000)]);
  assert.equal(p.packed.buffer, request.buffer);
  assert.deepEqual(p.offsets, [0]);
  assert.deepEqual(partsOf(p), [request.subarray(10, 69_000)]);
});

test('parts of different buffers, small parts, or far apart: copied together', () => {
  const a = Buffer.alloc(30_000, 1);
  const b = Buffer.alloc(30_000, 2);
  const apart = Buffer.alloc(400_000, 9);
  for (const parts of [[a, b], [a.subarray(0, 100), a.subarray(200, 300)], [apart.subarray(0, 20_000), apart.subarray(380_000, 400_000)]]) {
    const p = packBytes(parts);
    assert.notEqual(p.packed.buffer, a.buffer);
    assert.notEqual(p.packed.buffer, apart.buffer);
    assert.equal(p.packed.length, parts.reduce((n, x) => n + x.length, 0));
    assert.deepEqual(partsOf(p), parts);
  }
  assert.deepEqual(packBytes([]).lengths, []);
});
