// Components and Part (libs/runtime/src/components.ts): a service's parts
// start in order and drain in reverse; a failed start closes what had
// started; a part starts once.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ClosedError, Components, StartError, part, together } from '../src/index';

/** A part that records its steps in `log`. */
function recorded(log: string[], name: string, fail?: 'start' | 'drain') {
  return part(name, {
    start: async () => {
      log.push(`start ${name}`);
      if (fail === 'start') throw new Error(`${name} cannot start`);
    },
    drain: async () => {
      log.push(`drain ${name}`);
      if (fail === 'drain') throw new Error(`${name} cannot drain`);
    },
    close: () => log.push(`close ${name}`),
  });
}

describe('Components', () => {
  it('starts parts in the order added and drains them in reverse', async () => {
    const log: string[] = [];
    const c = new Components();
    for (const name of ['pool', 'bus', 'server']) c.add(name, recorded(log, name));
    assert.equal(c.state, 'new');
    await c.start();
    assert.equal(c.state, 'running');
    await c.stop();
    assert.equal(c.state, 'closed');
    assert.deepEqual(log, ['start pool', 'start bus', 'start server', 'drain server', 'drain bus', 'drain pool']);
  });

  it('a failed start closes the parts started before it, last first, and names the part', async () => {
    const log: string[] = [];
    const c = new Components();
    c.add('pool', recorded(log, 'pool'));
    c.add('bus', recorded(log, 'bus', 'start'));
    c.add('server', recorded(log, 'server'));
    await assert.rejects(c.start(), (err: unknown) => {
      assert.ok(err instanceof StartError);
      assert.equal(err.part, 'bus');
      assert.match(err.message, /^bus failed to start: bus cannot start$/);
      assert.ok(err.cause instanceof Error);
      return true;
    });
    assert.deepEqual(log, ['start pool', 'start bus', 'close bus', 'close pool']);
  });

  it('a part whose drain fails is closed, the others still drain, and the error is thrown', async () => {
    const log: string[] = [];
    const warned: string[] = [];
    const c = new Components({ warn: (obj) => warned.push((obj as { part: string }).part) });
    c.add('pool', recorded(log, 'pool'));
    c.add('bus', recorded(log, 'bus', 'drain'));
    c.add('server', recorded(log, 'server'));
    await c.start();
    await assert.rejects(c.stop(), /bus cannot drain/);
    assert.deepEqual(log.slice(3), ['drain server', 'drain bus', 'close bus', 'drain pool']);
    assert.deepEqual(warned, ['bus']);
  });

  it('stop is done once: a second call gets the same promise', async () => {
    const log: string[] = [];
    const c = new Components();
    c.add('pool', recorded(log, 'pool'));
    await c.start();
    const [a, b] = [c.stop(), c.stop()];
    assert.equal(a, b);
    await a;
    assert.deepEqual(log, ['start pool', 'drain pool']);
  });

  it('together: parts started and drained at once', async () => {
    const log: string[] = [];
    const c = new Components();
    c.add('loops', together('loops', [recorded(log, 'a'), recorded(log, 'b')]));
    await c.start();
    await c.stop();
    assert.deepEqual(log, ['start a', 'start b', 'drain a', 'drain b']);
  });
});

describe('Part', () => {
  it('refuses to start after it was drained (ClosedError)', async () => {
    const p = recorded([], 'relay');
    await p.start();
    await p.drain();
    assert.equal(p.state, 'closed');
    await assert.rejects(p.start(), (err: unknown) => err instanceof ClosedError && err.part === 'relay');
  });

  it('a part never started drains to closed without running its steps', async () => {
    const log: string[] = [];
    const p = recorded(log, 'loop');
    await p.drain();
    assert.equal(p.state, 'closed');
    assert.deepEqual(log, []);
  });

  it('drain during start waits for the start, then drains', async () => {
    const log: string[] = [];
    let release!: () => void;
    const p = part('slow', {
      start: async () => {
        await new Promise<void>((r) => (release = r));
        log.push('started');
      },
      drain: () => log.push('drained'),
    });
    const starting = p.start();
    const draining = p.drain();
    assert.equal(p.state, 'draining');
    release();
    await Promise.all([starting, draining]);
    assert.deepEqual(log, ['started', 'drained']);
    assert.equal(p.state, 'closed');
  });

  it('a missing drain step closes, a missing close step drains', async () => {
    const log: string[] = [];
    const onlyClose = part('server', { close: () => log.push('close') });
    const onlyDrain = part('pool', { drain: () => log.push('drain') });
    await Promise.all([onlyClose.start(), onlyDrain.start()]);
    await onlyClose.drain();
    await onlyDrain.close();
    assert.deepEqual(log, ['close', 'drain']);
  });
});
