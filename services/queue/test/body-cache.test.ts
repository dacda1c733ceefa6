// BodyCache: bounded by bytes, oldest dropped first, and a copy of what it
// is given (a body may be a view into a whole gRPC request).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BodyCache } from '../src/body-cache';

test('holds at most maxBytes, dropping the oldest bodies first; a body bigger than that is not kept', () => {
  const c = new BodyCache(100);
  c.put('a', Buffer.alloc(40, 1));
  c.put('b', Buffer.alloc(40, 2));
  c.put('c', Buffer.alloc(40, 3)); // 120 > 100: a goes
  assert.equal(c.has('a'), false);
  assert.deepEqual([c.has('b'), c.has('c')], [true, true]);
  assert.equal(c.bytes, 80);
  c.put('huge', Buffer.alloc(101));
  assert.equal(c.has('huge'), false);
  assert.equal(c.bytes, 80, 'nothing dropped for it either');
  c.put('b', Buffer.alloc(10, 9)); // replaced: counted once
  assert.equal(c.bytes, 50);
  assert.equal(c.get('b')![0], 9);
  c.delete('b');
  c.delete('missing');
  assert.deepEqual([c.size, c.bytes], [1, 40]);
});

test('keeps a copy: the request buffer a body was a view into is neither kept alive nor read again', () => {
  const request = Buffer.alloc(1000, 7);
  const c = new BodyCache(1000);
  c.put('m', request.subarray(100, 110));
  request.fill(0);
  const kept = c.get('m')!;
  assert.equal(kept.length, 10);
  assert.ok(kept.every((x) => x === 7));
  assert.notEqual(kept.buffer, request.buffer);
});

test('maxBytes 0 keeps nothing', () => {
  const c = new BodyCache(0);
  c.put('m', Buffer.alloc(1));
  assert.equal(c.size, 0);
});
