// The metric-name extraction the observability tests rely on (promql.ts).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { metricNames } from './promql';

test('metric names are found in selectors, aggregations, functions, binary operations and subqueries', () => {
  assert.deepEqual(metricNames('max by (state) (tern_queue_recipients{namespace=~"$namespace"})'), ['tern_queue_recipients']);
  assert.deepEqual(
    metricNames('histogram_quantile(0.99, sum by (le, stage) (rate(tern_policy_check_duration_seconds_bucket{namespace="mail"}[5m])))'),
    ['tern_policy_check_duration_seconds_bucket'],
  );
  assert.deepEqual(
    metricNames('max(tern_queue_recipients{state="queued"}) > 0 and on() (sum(increase(tern_queue_results_applied_total[15m])) or on() vector(0)) == 0'),
    ['tern_queue_recipients', 'tern_queue_results_applied_total'],
  );
  assert.deepEqual(metricNames('sum(x{a="b"}) - sum(x{a="b"} offset 30m) > 1e3'), ['x']);
  assert.deepEqual(metricNames('time() - process_start_time_seconds{job=~"$job"}'), ['process_start_time_seconds']);
  assert.deepEqual(metricNames('absent(up{job="queue"} == 1)'), ['up']);
  assert.deepEqual(metricNames('a / ignoring(reason) group_left(kind) b unless c'), ['a', 'b', 'c']);
  assert.deepEqual(metricNames('topk(10, sum without (pod) (rate(m{l="by (x) {y}"}[1m:10s])))'), ['m'], 'label values that look like syntax are skipped');
});

test('an unbalanced expression is an error, not a silent miss', () => {
  assert.throws(() => metricNames('sum(x{a="b")'), /unbalanced/);
  assert.throws(() => metricNames('x{a="b}'), /unterminated|unbalanced/);
});
