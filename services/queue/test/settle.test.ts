// Settling a result (settle.ts), without a database: a recipient's new state,
// next attempt and report, and a job's feedback for its destination.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { AttemptOutcome, DeliveryResult, DsnNotify, ReportKind, type SmtpReply } from '@tern/proto';
import { S } from '../src/model';
import { jobFeedback, settleRecipient } from '../src/settle';

const now = new Date('2026-12-07T12:00:00Z');
const backoff = { minS: 300, maxS: 3600, jitter: 0.2 };
/** No jitter: backoffMs' spread is 0 at random() = 0.5. */
const even = () => 0.5;
const inFuture = (s: number) => new Date(now.getTime() + s * 1000);
const rcpt = (o: { notify?: number[]; attemptCount?: number; expiresAt?: Date } = {}) => ({
  notify: o.notify ?? [],
  attemptCount: o.attemptCount ?? 0,
  expiresAt: o.expiresAt ?? inFuture(86_400),
});
const reply = (code: number, enhanced = '', text = ''): SmtpReply => ({ code, enhanced, text });
const outcome = (o: AttemptOutcome, r?: SmtpReply, remoteDsn = false, finalDelivery = false) => ({ outcome: o, reply: r, remoteDsn, finalDelivery });
const settle = (r: ReturnType<typeof rcpt>, o: ReturnType<typeof outcome>) => settleRecipient(r, o, now, backoff, even);

test('a delivered recipient is delivered, with no report and no next attempt', () => {
  assert.deepEqual(settle(rcpt(), outcome(AttemptOutcome.ATTEMPT_OUTCOME_DELIVERED, reply(250, '2.0.0', 'ok'))), {
    state: S.delivered,
    nextAttemptAt: null,
    report: undefined,
  });
});

test('a delivered recipient that asked NOTIFY=SUCCESS is relayed with a report, unless the next hop had DSN', () => {
  const success = rcpt({ notify: [DsnNotify.DSN_NOTIFY_SUCCESS] });
  assert.deepEqual(settle(success, outcome(AttemptOutcome.ATTEMPT_OUTCOME_DELIVERED, reply(250, '2.1.5'))), {
    state: S.relayed,
    nextAttemptAt: null,
    report: { kind: ReportKind.REPORT_KIND_RELAYED, status: '2.1.5' },
  });
  assert.equal(settle(success, outcome(AttemptOutcome.ATTEMPT_OUTCOME_DELIVERED, reply(250), true)).state, S.delivered);
  assert.equal(settle(success, outcome(AttemptOutcome.ATTEMPT_OUTCOME_DELIVERED, reply(250), true)).report, undefined);
});

test('a final delivery (LMTP) of a recipient that asked NOTIFY=SUCCESS is delivered with a "delivered" report, whether or not the next hop had DSN', () => {
  const success = rcpt({ notify: [DsnNotify.DSN_NOTIFY_SUCCESS, DsnNotify.DSN_NOTIFY_FAILURE] });
  for (const remoteDsn of [true, false]) {
    assert.deepEqual(settle(success, outcome(AttemptOutcome.ATTEMPT_OUTCOME_DELIVERED, reply(250, '2.0.0', 'ok'), remoteDsn, true)), {
      state: S.delivered,
      nextAttemptAt: null,
      report: { kind: ReportKind.REPORT_KIND_DELIVERED, status: '2.0.0' },
    }, `remoteDsn ${remoteDsn}`);
    // The status from the reply's class when it has no enhanced code.
    assert.deepEqual(settle(success, outcome(AttemptOutcome.ATTEMPT_OUTCOME_DELIVERED, reply(250), remoteDsn, true)).report, { kind: ReportKind.REPORT_KIND_DELIVERED, status: '2.0.0' });
  }
  // Without SUCCESS: delivered, no report (a FAILURE-only or default NOTIFY asks nothing of a success).
  for (const notify of [[], [DsnNotify.DSN_NOTIFY_FAILURE], [DsnNotify.DSN_NOTIFY_NEVER]]) {
    assert.deepEqual(settle(rcpt({ notify }), outcome(AttemptOutcome.ATTEMPT_OUTCOME_DELIVERED, reply(250, '2.0.0'), false, true)), { state: S.delivered, nextAttemptAt: null, report: undefined });
  }
  // A final delivery that was not a success is settled as any other.
  assert.equal(settle(success, outcome(AttemptOutcome.ATTEMPT_OUTCOME_FAILED, reply(550, '5.1.1'), true, true)).report?.kind, ReportKind.REPORT_KIND_FAILED);
  assert.equal(settle(success, outcome(AttemptOutcome.ATTEMPT_OUTCOME_DEFERRED, reply(452, '4.2.2'), true, true)).state, S.deferred);
  // A result without the field (a delivery pod that predates it) is not final: today's rule.
  assert.equal(settleRecipient(success, { outcome: AttemptOutcome.ATTEMPT_OUTCOME_DELIVERED, reply: reply(250), remoteDsn: false }, now, backoff, even).report?.kind, ReportKind.REPORT_KIND_RELAYED);
});

test('a relayed recipient is relayed with a report; its status comes from the basic code, else 2.0.0', () => {
  assert.deepEqual(settle(rcpt(), outcome(AttemptOutcome.ATTEMPT_OUTCOME_RELAYED, reply(250))).report, { kind: ReportKind.REPORT_KIND_RELAYED, status: '2.0.0' });
  assert.deepEqual(settle(rcpt(), outcome(AttemptOutcome.ATTEMPT_OUTCOME_RELAYED)), {
    state: S.relayed,
    nextAttemptAt: null,
    report: { kind: ReportKind.REPORT_KIND_RELAYED, status: '2.0.0' },
  });
});

test('a failed recipient fails with a failure report: the enhanced code, else the class of the code, else 5.0.0', () => {
  assert.deepEqual(settle(rcpt(), outcome(AttemptOutcome.ATTEMPT_OUTCOME_FAILED, reply(550, '5.1.1', 'no such user'))), {
    state: S.failed,
    nextAttemptAt: null,
    report: { kind: ReportKind.REPORT_KIND_FAILED, status: '5.1.1' },
  });
  assert.equal(settle(rcpt(), outcome(AttemptOutcome.ATTEMPT_OUTCOME_FAILED, reply(554))).report?.status, '5.0.0');
  assert.equal(settle(rcpt(), outcome(AttemptOutcome.ATTEMPT_OUTCOME_FAILED, reply(550, 'bogus'))).report?.status, '5.0.0');
  assert.equal(settle(rcpt(), outcome(AttemptOutcome.ATTEMPT_OUTCOME_FAILED)).report?.status, '5.0.0');
});

test('a deferred recipient is due again after the backoff of its next attempt, with no report', () => {
  // Third attempt next: min * 2^2 = 1200 s.
  assert.deepEqual(settle(rcpt({ attemptCount: 2 }), outcome(AttemptOutcome.ATTEMPT_OUTCOME_DEFERRED, reply(451, '4.3.0'))), {
    state: S.deferred,
    nextAttemptAt: inFuture(1200),
    report: undefined,
  });
  // Capped at the maximum.
  assert.deepEqual(settle(rcpt({ attemptCount: 9 }), outcome(AttemptOutcome.ATTEMPT_OUTCOME_DEFERRED)).nextAttemptAt, inFuture(3600));
});

test('the jitter moves the next attempt by at most the jitter fraction of the backoff', () => {
  const early = settleRecipient(rcpt(), outcome(AttemptOutcome.ATTEMPT_OUTCOME_DEFERRED), now, backoff, () => 0);
  const late = settleRecipient(rcpt(), outcome(AttemptOutcome.ATTEMPT_OUTCOME_DEFERRED), now, backoff, () => 1);
  assert.deepEqual([early.nextAttemptAt, late.nextAttemptAt], [inFuture(240), inFuture(360)]);
});

test('a deferral is never due after the recipient\'s lifetime', () => {
  const expiresAt = inFuture(10);
  assert.deepEqual(settle(rcpt({ expiresAt }), outcome(AttemptOutcome.ATTEMPT_OUTCOME_DEFERRED)), { state: S.deferred, nextAttemptAt: expiresAt, report: undefined });
});

test('a deferral at or past the lifetime expires the recipient with a failure report: the reply\'s status, else 4.4.7', () => {
  assert.deepEqual(settle(rcpt({ expiresAt: now }), outcome(AttemptOutcome.ATTEMPT_OUTCOME_DEFERRED, reply(451, '4.7.1', 'greylisted'))), {
    state: S.expired,
    nextAttemptAt: null,
    report: { kind: ReportKind.REPORT_KIND_FAILED, status: '4.7.1' },
  });
  assert.equal(settle(rcpt({ expiresAt: inFuture(-1) }), outcome(AttemptOutcome.ATTEMPT_OUTCOME_DEFERRED, reply(421))).report?.status, '4.0.0');
  assert.equal(settle(rcpt({ expiresAt: inFuture(-1) }), outcome(AttemptOutcome.ATTEMPT_OUTCOME_DEFERRED)).report?.status, '4.4.7');
});

test('an outcome not given is settled as a deferral', () => {
  assert.equal(settle(rcpt(), outcome(AttemptOutcome.ATTEMPT_OUTCOME_UNSPECIFIED)).state, S.deferred);
  assert.equal(settle(rcpt({ expiresAt: now }), outcome(AttemptOutcome.ATTEMPT_OUTCOME_UNSPECIFIED)).state, S.expired);
});

const result = (destinationFailure: boolean, ...rcpts: Array<[AttemptOutcome, SmtpReply?]>) =>
  DeliveryResult.fromPartial({ destinationFailure, recipients: rcpts.map(([o, r]) => ({ outcome: o, reply: r })) });

test('a job whose recipients were all delivered or relayed reached its destination, with no error', () => {
  const res = result(false, [AttemptOutcome.ATTEMPT_OUTCOME_DELIVERED, reply(250)], [AttemptOutcome.ATTEMPT_OUTCOME_RELAYED, reply(250)]);
  assert.deepEqual(jobFeedback(res, reply(250)), { ok: true, failed: false, error: '' });
});

test('a job with a recipient not delivered reached its destination; the error is the first reply of 400 or more', () => {
  const res = result(
    false,
    [AttemptOutcome.ATTEMPT_OUTCOME_DELIVERED, reply(250)],
    [AttemptOutcome.ATTEMPT_OUTCOME_FAILED, reply(550, '5.1.1', 'no such user')],
    [AttemptOutcome.ATTEMPT_OUTCOME_DEFERRED, reply(452, '4.2.2', 'full')],
  );
  assert.deepEqual(jobFeedback(res, reply(250)), { ok: true, failed: false, error: '550 5.1.1 no such user' });
  assert.deepEqual(jobFeedback(result(false, [AttemptOutcome.ATTEMPT_OUTCOME_DEFERRED]), undefined), { ok: true, failed: false, error: 'delivery failed' });
});

test('a job that failed at its destination is a failure there; the error is the reply given', () => {
  const res = result(true, [AttemptOutcome.ATTEMPT_OUTCOME_DEFERRED, reply(421, '4.3.2', 'too busy')]);
  assert.deepEqual(jobFeedback(res, reply(421, '4.3.2', 'too busy')), { ok: false, failed: true, error: '421 4.3.2 too busy' });
  assert.deepEqual(jobFeedback(result(true, [AttemptOutcome.ATTEMPT_OUTCOME_DEFERRED]), undefined), { ok: false, failed: true, error: 'delivery failed' });
});
