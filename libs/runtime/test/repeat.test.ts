// repeatEvery (libs/runtime/src/repeat.ts): the reload timer of the queue's
// route table and bounce rules, delivery's route copy and policy's cache.
// On mocked timers: what is checked is the schedule, not the machine's speed.
import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, it, mock } from 'node:test';
import { repeatEvery } from '../src/repeat';

/** Lets the promise callbacks of a settled run (catch, finally: the next schedule) happen. */
const settle = () => new Promise<void>((resolve) => setImmediate(resolve));

describe('repeatEvery', () => {
  beforeEach(() => mock.timers.enable({ apis: ['setTimeout'] }));
  afterEach(() => mock.timers.reset());

  it('runs first after one interval, then every interval, and not after stop()', async () => {
    let runs = 0;
    const errors: unknown[] = [];
    const r = repeatEvery(20, () => runs++, (err) => errors.push(err));
    mock.timers.tick(19);
    assert.equal(runs, 0);
    mock.timers.tick(1);
    assert.equal(runs, 1);
    for (let i = 2; i <= 4; i++) {
      await settle();
      mock.timers.tick(20);
      assert.equal(runs, i);
    }
    await settle();
    r.stop();
    mock.timers.tick(200);
    await settle();
    assert.equal(runs, 4);
    assert.deepEqual(errors, []);
  });

  it('hands a failure (thrown or rejected) to onError and keeps its schedule', async () => {
    const errors: string[] = [];
    let runs = 0;
    const r = repeatEvery(
      10,
      () => {
        runs++;
        if (runs === 1) throw new Error('thrown');
        if (runs === 2) return Promise.reject(new Error('rejected'));
        return undefined;
      },
      (err) => errors.push((err as Error).message),
    );
    for (let i = 0; i < 3; i++) {
      mock.timers.tick(10);
      await settle();
    }
    r.stop();
    assert.equal(runs, 3);
    assert.deepEqual(errors, ['thrown', 'rejected']);
  });

  it('schedules the next run only when the previous one has settled', async () => {
    let runs = 0;
    let finish: (() => void) | undefined;
    const r = repeatEvery(
      5,
      () => {
        runs++;
        return new Promise<void>((resolve) => (finish = resolve));
      },
      assert.fail as (err: unknown) => void,
    );
    mock.timers.tick(5);
    assert.equal(runs, 1);
    mock.timers.tick(100);
    await settle();
    assert.equal(runs, 1, 'no second run while the first is under way');
    finish!();
    await settle();
    mock.timers.tick(5);
    assert.equal(runs, 2);
    r.stop();
  });
});
