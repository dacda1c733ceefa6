// The wake/poll loop (libs/runtime/src/poll-loop.ts) of the queue's
// scheduler and outbox relay: passes back to back while there is more,
// a wake runs a pass at once, a failure backs off, drain waits for the
// pass under way.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { PollLoop, pollBackoffMs } from '../src/index';

const HOUR = 3_600_000;
const turns = async (n = 5) => {
  for (let i = 0; i < n; i++) await new Promise<void>((r) => setImmediate(r));
};

/** A loop whose passes answer from `answers` (true: more; an Error: fails), recording each pass; `next` resolves at the next pass. */
function loop(answers: Array<boolean | Error>, opts: { intervalMs?: number; wakeDuringBackoff?: boolean } = {}) {
  let passes = 0;
  const errors: number[] = [];
  let waiting: (() => void) | undefined;
  const l = new PollLoop({
    name: 'test loop',
    intervalMs: opts.intervalMs ?? HOUR,
    wakeDuringBackoff: opts.wakeDuringBackoff,
    onError: (_err, failures) => errors.push(failures),
    pass: async () => {
      const a = answers[passes++] ?? false;
      waiting?.();
      waiting = undefined;
      if (a instanceof Error) throw a;
      return a;
    },
  });
  return {
    l,
    errors,
    get passes() {
      return passes;
    },
    next: () => new Promise<void>((r) => (waiting = r)),
  };
}

describe('PollLoop', () => {
  it('runs passes back to back while a pass says there is more, then waits', async () => {
    const t = loop([true, true, false]);
    await t.l.start();
    await turns();
    assert.equal(t.passes, 3, 'three passes, then the loop waits for the (hour-long) interval');
    await t.l.drain();
  });

  it('wake() runs a pass before the interval ends', async () => {
    const t = loop([]);
    await t.l.start();
    await turns();
    assert.equal(t.passes, 1);
    const next = t.next();
    t.l.wake();
    await next;
    assert.equal(t.passes, 2);
    await t.l.drain();
  });

  it('a wake during a pass makes the next pass run at once', async () => {
    let release!: () => void;
    let passes = 0;
    const l = new PollLoop({
      name: 'test loop',
      intervalMs: HOUR,
      onError: () => undefined,
      pass: async () => {
        if (++passes === 1) await new Promise<void>((r) => (release = r));
        return false;
      },
    });
    await l.start();
    await turns();
    l.wake();
    release();
    await turns();
    assert.equal(passes, 2);
    await l.drain();
  });

  it('polls at the interval without a wake', async () => {
    const t = loop([], { intervalMs: 5 });
    await t.l.start();
    await t.next();
    await t.next();
    assert.ok(t.passes >= 3);
    await t.l.drain();
  });

  it('a failed pass is reported with its count and retried after the backoff; a wake ends the backoff', async () => {
    const t = loop([new Error('db down'), false]);
    await t.l.start();
    await turns();
    assert.deepEqual(t.errors, [1]);
    const next = t.next();
    t.l.wake();
    await next;
    assert.equal(t.passes, 2);
    await t.l.drain();
  });

  it('with wakeDuringBackoff false, a wake does not end the backoff, but drain does', async () => {
    const t = loop([new Error('nats down')], { wakeDuringBackoff: false });
    await t.l.start();
    await turns();
    t.l.wake();
    await turns(20);
    assert.equal(t.passes, 1, `still backing off (${pollBackoffMs(1)} ms)`);
    await t.l.drain();
    assert.equal(t.l.state, 'closed');
  });

  it('backoff doubles from 500 ms up to 10 s', () => {
    assert.deepEqual([1, 2, 3, 5, 6, 20].map(pollBackoffMs), [500, 1000, 2000, 8000, 10_000, 10_000]);
  });

  it('drain waits for the pass under way and runs no other', async () => {
    let release!: () => void;
    let passes = 0;
    let finished = false;
    const l = new PollLoop({
      name: 'test loop',
      intervalMs: HOUR,
      onError: () => undefined,
      pass: async () => {
        passes++;
        await new Promise<void>((r) => (release = r));
        finished = true;
        return true;
      },
    });
    await l.start();
    await turns();
    assert.ok(l.running);
    const draining = l.drain();
    assert.equal(l.running, false);
    release();
    await draining;
    assert.equal(finished, true);
    assert.equal(passes, 1);
  });
});
