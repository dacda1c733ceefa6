// The error webhooks answers for an endpoint URL it cannot parse quotes the
// URL without its password (admin logs refused changes with that error).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { checkEndpointUrl } from '../src/address';

test('an endpoint URL that is not a URL is quoted in the error without its password', () => {
  assert.throws(
    () => checkEndpointUrl('https://app:S3cretPw@app example.com/hook', { allowHttp: false, allowPrivate: false }),
    (err: Error) => /is not a URL/.test(err.message) && !err.message.includes('S3cretPw') && err.message.includes('"https://app:***@app example.com/hook"'),
  );
});
