// HeldAck: applied result messages are acknowledged one behind.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { HeldAck } from '../src/results';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const msg = () => {
  const m = { acks: 0, ack: () => void m.acks++ };
  return m;
};

test('the newest applied message is acked when the next one is held, or after the hold time, and once', async () => {
  const held = new HeldAck(80);
  const a = msg();
  const b = msg();
  const c = msg();
  held.hold(a);
  assert.equal(a.acks, 0, 'held');
  held.hold(b);
  assert.deepEqual([a.acks, b.acks], [1, 0], 'the previous one goes when the next is held');
  await sleep(40);
  held.hold(c); // restarts the hold time
  assert.deepEqual([b.acks, c.acks], [1, 0]);
  await sleep(50);
  assert.equal(c.acks, 0, 'hold time counted from the last hold');
  await sleep(100);
  assert.equal(c.acks, 1, 'acked when nothing followed within the hold time');
  held.release();
  assert.deepEqual([a.acks, b.acks, c.acks], [1, 1, 1], 'release with nothing held acks nothing again');
});

test('release acks the held message at once (shutdown), and no timer keeps running', async () => {
  const held = new HeldAck(10_000);
  const a = msg();
  held.hold(a);
  held.release();
  assert.equal(a.acks, 1);
  await sleep(20);
  assert.equal(a.acks, 1);
});
