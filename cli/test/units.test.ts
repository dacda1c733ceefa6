// Argument-to-request mapping and formatting, without a server.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { DomainKind, QueueAction, RecipientCheck, RecipientState, RouteKind, TlsPolicy } from '@tern/proto';
import { resolveConnection, tokenFromFile } from '../src/client';
import { describeError, EXIT } from '../src/errors';
import { age, formatAction, formatSummary, table } from '../src/format';
import { actionRequest, buildFilter, domainFromArgs, listRequest, parseDuration, parseSize, parseStates, routeFromArgs, UsageError } from '../src/requests';
import { grpc } from '@tern/grpc';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

describe('requests', () => {
  it('parses durations', () => {
    assert.equal(parseDuration('90', '--x'), 90);
    assert.equal(parseDuration('15m', '--x'), 900);
    assert.equal(parseDuration('1h30m', '--x'), 5400);
    assert.equal(parseDuration('5d', '--x'), 432000);
    assert.throws(() => parseDuration('5 days', '--older-than'), /--older-than: "5 days" is not a duration/);
    assert.throws(() => parseDuration('h', '--x'), UsageError);
  });

  it('parses states and refuses unknown ones', () => {
    assert.deepEqual(parseStates(['deferred,HELD', 'deferred']), [RecipientState.RECIPIENT_STATE_DEFERRED, RecipientState.RECIPIENT_STATE_HELD]);
    assert.throws(() => parseStates(['unspecified']), /not a state/);
  });

  it('builds a filter only from options given', () => {
    assert.equal(buildFilter({}), undefined);
    assert.deepEqual(buildFilter({ sender: 'a@b.test', newerThan: '1d' }), {
      sender: 'a@b.test',
      recipient: '',
      domain: '',
      states: [],
      minAgeSeconds: 0,
      maxAgeSeconds: 86400,
    });
    assert.throws(() => buildFilter({ olderThan: '2d', newerThan: '1d' }), /nothing can match/);
  });

  it('maps list and action requests', () => {
    const pending = [RecipientState.RECIPIENT_STATE_QUEUED, RecipientState.RECIPIENT_STATE_INFLIGHT, RecipientState.RECIPIENT_STATE_DEFERRED, RecipientState.RECIPIENT_STATE_HELD];
    assert.deepEqual(listRequest({ limit: '10', pageToken: 'abc' }), {
      filter: { sender: '', recipient: '', domain: '', states: pending, minAgeSeconds: 0, maxAgeSeconds: 0 },
      pageSize: 10,
      pageToken: 'abc',
    });
    assert.deepEqual(listRequest({ state: ['held'] }).filter?.states, [RecipientState.RECIPIENT_STATE_HELD]);
    assert.equal(parseStates(['all']).length, 9);
    assert.deepEqual(parseStates(['final', 'delivered']), parseStates(['final']));
    assert.throws(() => listRequest({ limit: '0' }), /--limit/);
    const one = actionRequest('retry', 'Q1', {});
    assert.equal(one.action, QueueAction.QUEUE_ACTION_RETRY);
    assert.equal(one.queueId, 'Q1');
    assert.equal(one.filter, undefined);
    const all = actionRequest('release', undefined, { all: true, dryRun: true });
    assert.equal(all.queueId, '');
    assert.equal(all.dryRun, true);
    assert.equal(all.all, true, '--all is sent as the explicit flag');
    assert.equal(all.filter, undefined, 'not as an empty filter, which the queue refuses');
    assert.equal(actionRequest('hold', undefined, { domain: 'x.test' }).all, false);
    assert.throws(() => actionRequest('delete', undefined, {}), /which messages/);
    assert.throws(() => actionRequest('delete', 'Q1', { all: true }), /not both/);
  });

  it('maps routes and domains', () => {
    assert.deepEqual(routeFromArgs('Example.COM', { kind: 'lmtp', target: 'unix:/run/lmtp', tlsPolicy: 'none' }), {
      domain: 'example.com',
      kind: RouteKind.ROUTE_KIND_LMTP,
      target: 'unix:/run/lmtp',
      tls: TlsPolicy.TLS_POLICY_NONE,
      authUser: '',
      authSecret: '',
    });
    assert.throws(() => routeFromArgs('x', { kind: 'smarthost' }), /--target is required/);
    assert.throws(() => routeFromArgs('x', { kind: 'carrier-pigeon' }), /--kind: "carrier-pigeon" is not one of mx, smarthost, lmtp/);
    assert.deepEqual(domainFromArgs('r.test', { kind: 'relay', maxSize: '10M' }), {
      name: 'r.test',
      kind: DomainKind.DOMAIN_KIND_RELAY,
      catchAll: '',
      maxMessageSize: 10 * 1024 * 1024,
      recipientCheck: RecipientCheck.RECIPIENT_CHECK_UNSPECIFIED,
    });
    assert.equal(domainFromArgs('r.test', { kind: 'relay', recipients: 'callout' }).recipientCheck, RecipientCheck.RECIPIENT_CHECK_CALLOUT);
    assert.throws(() => domainFromArgs('l.test', { recipients: 'list' }), /--recipients applies to relay domains only/);
    assert.throws(() => domainFromArgs('r.test', { kind: 'relay', catchAll: 'a@r.test' }), /local domains only/);
    assert.equal(parseSize('512k', '--max-size'), 524288);
  });
});

describe('connection', () => {
  it('takes the address and token from options before the environment', () => {
    const c = resolveConnection({ server: '10.0.0.1:7000' }, { TERN_ADMIN_ADDR: 'x:1', TERN_ADMIN_TOKEN: 'tok' }, '/');
    assert.equal(c.address, '10.0.0.1:7000');
    assert.equal(c.token, 'tok');
    assert.equal(c.tokenSource, 'TERN_ADMIN_TOKEN');
    assert.equal(c.tls, false);
    assert.equal(resolveConnection({}, { TERN_ADMIN_CA_FILE: '/ca.pem' }, '/').tls, true);
    assert.throws(() => resolveConnection({ certFile: '/c.pem' }, {}, '/'), /--cert-file and --key-file/);
  });

  it('reads a token file: first line, or the token of a name:token line', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-tok-'));
    fs.writeFileSync(path.join(dir, 'a'), '# comment\n\nabc123\n');
    fs.writeFileSync(path.join(dir, 'b'), 'admin:def456\n');
    assert.equal(tokenFromFile(path.join(dir, 'a'), 'x'), 'abc123');
    assert.equal(tokenFromFile(path.join(dir, 'b'), 'x'), 'def456');
    assert.throws(() => tokenFromFile(path.join(dir, 'missing'), 'TERN_ADMIN_TOKEN_FILE'), /cannot read the token file .*missing \(TERN_ADMIN_TOKEN_FILE\): it does not exist\. Check TERN_ADMIN_TOKEN_FILE/);
    fs.rmSync(dir, { recursive: true });
  });
});

describe('errors', () => {
  const conn = { address: '127.0.0.1:7000', tokenSource: 'TERN_ADMIN_TOKEN', token: 't', tls: false, deadlineMs: 15000 };
  const err = (code: grpc.status, details: string, owner?: string) => {
    const e = Object.assign(new Error(details), { code, details, metadata: new grpc.Metadata() });
    if (owner) e.metadata.set('tern-owner', owner);
    return e;
  };

  it('maps transport failures and deadlines', () => {
    const e = describeError(err(grpc.status.UNAVAILABLE, 'No connection established. Last error: Error: connect ECONNREFUSED 127.0.0.1:7000'), conn);
    assert.equal(e.exitCode, EXIT.UNREACHABLE);
    assert.match(e.message, /^cannot reach the admin API at 127\.0\.0\.1:7000 \(connection refused\)\./);
    const d = describeError(err(grpc.status.DEADLINE_EXCEEDED, 'Deadline exceeded'), conn);
    assert.equal(d.message, 'the admin API at 127.0.0.1:7000 did not answer within 15s (DEADLINE_EXCEEDED). Retry, or allow longer with --timeout.');
  });

  it('maps usage errors to exit 2', () => {
    assert.equal(describeError(new UsageError('bad'), conn).exitCode, EXIT.USAGE);
  });

  it('names a number the request could not carry as the operator\'s value, not INTERNAL', () => {
    const e = describeError(err(grpc.status.INTERNAL, 'Request message serialization failure: invalid uint32: 99999999999'), conn);
    assert.equal(e.exitCode, EXIT.USAGE);
    assert.equal(e.message, 'a value given is out of range for the admin API (invalid uint32: 99999999999), nothing sent: check the numbers in the command (its --help says what each option takes)');
    const d = describeError(err(grpc.status.INTERNAL, 'Error deserializing request: Value is larger than Number.MAX_SAFE_INTEGER'), conn);
    assert.equal(d.exitCode, EXIT.FAILED);
    assert.match(d.message, /^the admin API could not read the request \(.*\): a number given is probably out of range/);
  });
});

describe('format', () => {
  it('aligns tables', () => {
    assert.equal(table(['A', 'LONG'], [['xyz', '1'], ['q', '22']]), 'A    LONG\nxyz  1\nq    22\n');
  });

  it('prints compact ages', () => {
    const now = new Date('2025-01-01T12:00:00Z');
    assert.equal(age(new Date('2025-01-01T11:59:15Z'), now), '45s');
    assert.equal(age(new Date('2025-01-01T09:30:00Z'), now), '2h30m');
    assert.equal(age(new Date('2024-12-29T10:00:00Z'), now), '3d2h');
    assert.equal(age(undefined, now), '-');
  });

  it('says what an action did', () => {
    assert.equal(formatAction('delete', { messages: 1, recipients: 2, dryRun: false }), '1 message (2 recipients) deleted.\n');
    assert.equal(formatAction('retry', { messages: 0, recipients: 0, dryRun: true }), 'Dry run: would retry 0 messages (0 recipients). Nothing changed.\n');
  });

  it('says when the queue is empty', () => {
    assert.equal(formatSummary([], new Date()), 'The queue is empty.\n');
  });
});
