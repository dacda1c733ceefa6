// withBody (services/queue/src/outbox.ts) writes DeliveryJob.body by hand
// after a stored payload; the generated decoder must read back the job the
// generated encoder would have written, whatever the body's length (one- to
// three-byte length prefixes) and its bytes.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { DeliveryJob } from '@tern/proto';
import { withBody } from '../src/outbox';

describe('withBody', () => {
  const job = DeliveryJob.fromPartial({
    jobId: 'j1',
    queueId: 'q1',
    destination: 'dest.example',
    recipients: [{ recipientId: 'q1.0', address: 'a@dest.example', orcpt: '', notify: [] }],
    size: 0,
  });
  const stored = DeliveryJob.encode(job).finish();

  for (const len of [1, 127, 128, 300, 16_383, 16_384, 70_000, 2_097_152]) {
    test(`a body of ${len} bytes`, () => {
      const body = Buffer.alloc(len);
      for (let i = 0; i < len; i++) body[i] = (i * 131 + 7) & 0xff; // every byte value, 8-bit included
      const out = withBody(stored, body);
      const back = DeliveryJob.decode(out);
      assert.equal(Buffer.compare(Buffer.from(back.body), body), 0, 'the body read back');
      assert.deepEqual({ ...back, body: undefined }, { ...job, body: undefined }, 'the other fields untouched');
      assert.equal(out.length, Buffer.from(DeliveryJob.encode({ ...job, body }).finish()).length, 'as long as the generated encoding');
    });
  }

  test('no body: the payload as it is', () => {
    assert.equal(withBody(stored, undefined), stored);
    assert.equal(withBody(stored, Buffer.alloc(0)), stored);
  });
});
