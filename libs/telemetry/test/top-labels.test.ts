import assert from 'node:assert/strict';
import { test } from 'node:test';
import { OTHER_LABEL, TopLabels } from '../src/top-labels';

test('the busiest destinations keep their own label, the long tail shares "other", and label values stay bounded', () => {
  const top = new TopLabels(5);
  const seen = new Set<string>();
  // Five heavy destinations among 5,000 that send one message each, interleaved.
  for (let i = 0; i < 5_000; i++) {
    seen.add(top.label(`tail${i}.test`));
    seen.add(top.label(`heavy${i % 5}.test`));
    if (i % 3 === 0) seen.add(top.label(`heavy${i % 5}.test`));
  }
  for (let h = 0; h < 5; h++) assert.equal(top.label(`heavy${h}.test`), `heavy${h}.test`);
  assert.equal(top.label('tail-new.test'), OTHER_LABEL);
  assert.deepEqual([...seen].filter((l) => l.startsWith('tail')), [], 'no tail destination got a label of its own');
  assert.ok(seen.size <= 5 + 1, `label values seen: ${[...seen].join(' ')}`);
});

test('a destination that becomes busy takes a place in the top N', () => {
  const top = new TopLabels(2);
  for (let i = 0; i < 100; i++) {
    top.label('a.test');
    top.label('b.test');
  }
  assert.equal(top.label('c.test'), OTHER_LABEL);
  for (let i = 0; i < 300; i++) top.label('c.test');
  assert.equal(top.peek('c.test'), 'c.test');
  assert.equal(top.peek('nosuch.test'), OTHER_LABEL);
});

test('N = 0 puts everything under "other"', () => {
  const top = new TopLabels(0);
  assert.equal(top.label('a.test'), OTHER_LABEL);
});
