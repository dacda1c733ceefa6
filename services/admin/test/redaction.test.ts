// What admin logs of a webhook endpoint change never holds a password given
// in the endpoint's URL (webhooks refuses such a URL, and the refusal is
// logged with the request's fields).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { describeChange } from '../src/service';

test('a webhook endpoint change is described for the log without the password of its URL', () => {
  for (const method of ['createWebhookEndpoint', 'updateWebhookEndpoint'] as const) {
    const d = describeChange(method, { id: 'wh_1', url: 'https://app:S3cretPw@app.example.com/hook', eventTypes: [], batch: false });
    assert.equal(d.url, 'https://app:***@app.example.com/hook', method);
    assert.doesNotMatch(JSON.stringify(d), /S3cretPw/, method);
  }
  assert.equal(describeChange('updateWebhookEndpoint', { id: 'wh_1', eventTypes: [] }).url, undefined, 'an update without a URL has none');
});
