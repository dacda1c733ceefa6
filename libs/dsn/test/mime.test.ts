// libmime is loaded at its first use (src/mime.ts): a process that imports
// @tern/dsn for its classifier (the queue, delivery) never loads it, and the
// first header that needs it still decodes. Its own file: node --test runs
// each file in a fresh process, so nothing here has loaded libmime before.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { classifyReply, isDeliveryStatusContentType, openOriginal } from '@tern/dsn';

const libmimeLoaded = () => Object.keys(require.cache).some((file) => /[\\/]node_modules[\\/]libmime[\\/]/.test(file));

async function* source(text: string): AsyncIterable<Uint8Array> {
  yield Buffer.from(text, 'utf8');
}

test('importing @tern/dsn and classifying a reply load no libmime; the first encoded subject and report type do', async () => {
  assert.equal(classifyReply({ code: 550, enhanced: '5.1.1', text: 'User unknown' }), 'user_unknown');
  assert.equal(libmimeLoaded(), false);
  const original = await openOriginal(source('Subject: =?UTF-8?Q?caf=C3=A9_cr=C3=A8me?=\r\nMessage-ID: <a@b>\r\n\r\nbody\r\n'));
  assert.equal(original.subject, 'café crème');
  assert.equal(libmimeLoaded(), true);
  assert.equal(isDeliveryStatusContentType('multipart/report; report-type="delivery-status"; boundary=x'), true);
});
