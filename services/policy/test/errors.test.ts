// Policy's named errors (src/errors.ts) carry the gRPC status and message
// each answered with before they were classes of libs/grpc's StatusError.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { grpc, StatusError } from '@tern/grpc';
import { DkimKeyNotFoundError, DkimSelectorExistsError, invalid, precondition, RpcFailedError, StillReferencedError } from '../src/errors';

test('each named error: its status and its message, as a grpc-js ServiceError', () => {
  const cases: [StatusError, grpc.status, string][] = [
    [invalid('domain.name', 'required'), grpc.status.INVALID_ARGUMENT, 'domain.name: required'],
    [precondition('no TERN_DKIM_KEK'), grpc.status.FAILED_PRECONDITION, 'no TERN_DKIM_KEK'],
    [new DkimKeyNotFoundError('example.test', 's1'), grpc.status.NOT_FOUND, 'no DKIM key s1 for example.test; see tern dkim ls example.test'],
    [
      new DkimSelectorExistsError('example.test', 's1', 'retired'),
      grpc.status.ALREADY_EXISTS,
      'selector s1 of example.test exists (retired); choose a new selector (a retired one is not reused: resolvers may still hold its record)',
    ],
    [new StillReferencedError('DeleteDomain'), grpc.status.FAILED_PRECONDITION, 'DeleteDomain: still referenced by other policy data'],
    [new RpcFailedError('ListDomains', 'connection terminated'), grpc.status.UNAVAILABLE, 'ListDomains failed: connection terminated'],
  ];
  for (const [err, code, message] of cases) {
    assert.ok(err instanceof StatusError);
    assert.equal(err.code, code, message);
    assert.equal(err.details, message);
    assert.equal(err.message, message);
  }
});
