// The batcher (libs/runtime/src/batcher.ts) behind the queue's group commit
// and delivery's result publishes: how items are gathered into flushes, with
// a delay and without one.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Batcher } from '../src/batcher';

/** A batcher whose flushes wait until released, recording every batch. */
function recording(delayMs: number, concurrency: number, maxItems = 100, flushWaitingWhenIdle?: boolean) {
  const batches: number[][] = [];
  const release: Array<() => void> = [];
  const batcher = new Batcher<number, string>({
    maxItems,
    delayMs,
    concurrency,
    flushWaitingWhenIdle,
    flush: async (items) => {
      batches.push(items);
      await new Promise<void>((r) => release.push(r));
      return items.map((i) => `r${i}`);
    },
  });
  return { batcher, batches, release };
}

const turn = () => new Promise<void>((r) => setImmediate(r));
/** A few turns: a flush that ends schedules the next one for the turn after. */
const settle = async () => {
  for (let i = 0; i < 3; i++) await turn();
};

describe('Batcher', () => {
  it('with delay 0, flushes the items of one event-loop turn together, at the end of that turn', async () => {
    const { batcher, batches, release } = recording(0, 1);
    const results = [batcher.add(1), batcher.add(2), batcher.add(3)];
    assert.equal(batches.length, 0, 'nothing flushed within the turn');
    await turn();
    assert.deepEqual(batches, [[1, 2, 3]]);
    release.shift()!();
    assert.deepEqual(await Promise.all(results), ['r1', 'r2', 'r3']);
  });

  it('with delay 0, gathers what arrives while the flushes in flight run into the next one', async () => {
    const { batcher, batches, release } = recording(0, 1);
    const first = batcher.add(1);
    await turn();
    const later = [batcher.add(2), batcher.add(3)];
    await turn();
    const last = batcher.add(4);
    await turn();
    assert.deepEqual(batches, [[1]], 'the others wait for the flush in flight');
    release.shift()!();
    assert.equal(await first, 'r1');
    await settle();
    assert.deepEqual(batches, [[1], [2, 3, 4]]);
    release.shift()!();
    assert.deepEqual(await Promise.all([...later, last]), ['r2', 'r3', 'r4']);
  });

  it('with delay 0 and two flushes allowed, a second turn starts a second flush at once', async () => {
    const { batcher, batches, release } = recording(0, 2);
    const a = batcher.add(1);
    await turn();
    const b = batcher.add(2);
    await turn();
    const c = batcher.add(3);
    await turn();
    assert.deepEqual(batches, [[1], [2]]);
    release.shift()!();
    await a;
    await settle();
    assert.deepEqual(batches, [[1], [2], [3]]);
    release.shift()!();
    release.shift()!();
    assert.deepEqual(await Promise.all([b, c]), ['r2', 'r3']);
  });

  it('with a delay, waits that long after the first item, and flushes at once when full', async () => {
    const { batcher, batches, release } = recording(30, 1, 3);
    const first = [batcher.add(1)];
    await turn();
    await new Promise((r) => setTimeout(r, 5));
    first.push(batcher.add(2));
    await turn();
    assert.equal(batches.length, 0, 'still gathering');
    await new Promise((r) => setTimeout(r, 40));
    assert.deepEqual(batches, [[1, 2]]);
    release.shift()!();
    assert.deepEqual(await Promise.all(first), ['r1', 'r2']);
    const full = [batcher.add(3), batcher.add(4), batcher.add(5)];
    assert.deepEqual(batches, [[1, 2], [3, 4, 5]], 'maxItems flushes without waiting');
    release.shift()!();
    assert.deepEqual(await Promise.all(full), ['r3', 'r4', 'r5']);
  });

  it('items that came in during a flush leave when it ends, or, with flushWaitingWhenIdle false, when their own delay has passed', async () => {
    for (const eager of [true, false]) {
      const { batcher, batches, release } = recording(40, 1, 100, eager ? undefined : false);
      const first = batcher.add(1);
      await new Promise((r) => setTimeout(r, 50));
      assert.deepEqual(batches, [[1]]);
      const second = batcher.add(2); // its delay runs from now
      await new Promise((r) => setTimeout(r, 10));
      release.shift()!();
      await first;
      await settle();
      if (eager) assert.deepEqual(batches, [[1], [2]], 'sent as soon as the flush ended');
      else {
        assert.deepEqual(batches, [[1]], 'still gathering for its delay');
        await new Promise((r) => setTimeout(r, 45));
        assert.deepEqual(batches, [[1], [2]]);
      }
      release.shift()!();
      assert.equal(await second, 'r2');
    }
  });

  it('a failed flush fails each of its items, and drain() waits for what is pending', async () => {
    const batcher = new Batcher<number, number>({
      maxItems: 10,
      delayMs: 0,
      flush: async (items) => {
        if (items.includes(13)) throw new Error('storage down');
        return items;
      },
    });
    const bad = [batcher.add(13), batcher.add(14)];
    await assert.rejects(bad[0]!, /storage down/);
    await assert.rejects(bad[1]!, /storage down/);
    const ok = batcher.add(7);
    await batcher.drain();
    assert.equal(await ok, 7);
  });
});
