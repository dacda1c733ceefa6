import { test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { KekError, keyEncryptionKey, parseEnv, seal, unseal, z } from '../src/index';

const schema = z.object({ TERN_DKIM_KEK: keyEncryptionKey().optional() });

test('a key-encryption key is base64 of 32 bytes; a bad one is refused naming the variable, never showing the value', () => {
  const good = crypto.randomBytes(32).toString('base64');
  assert.equal(parseEnv(schema, { TERN_DKIM_KEK: good }).TERN_DKIM_KEK?.length, 32);
  assert.equal(parseEnv(schema, {}).TERN_DKIM_KEK, undefined);
  for (const bad of [crypto.randomBytes(16).toString('base64'), 'not base64 at all!', crypto.randomBytes(33).toString('base64')]) {
    assert.throws(
      () => parseEnv(schema, { TERN_DKIM_KEK: bad }),
      (err: Error) => {
        assert.match(err.message, /TERN_DKIM_KEK: expected base64 of 32 bytes \(make one with: openssl rand -base64 32\) \(got a value, not shown\)/);
        assert.ok(!err.message.includes(bad), 'the value is not in the message');
        return true;
      },
    );
  }
});

test('sealed secrets open with the same key and label only; the sealed form does not contain the plaintext', () => {
  const kek = crypto.randomBytes(32);
  const secret = Buffer.from('-----BEGIN PRIVATE KEY-----\nsecret\n-----END PRIVATE KEY-----\n');
  const sealed = seal(kek, secret, 'dkim:example.test:s1');
  assert.ok(!sealed.includes(Buffer.from('PRIVATE KEY')));
  assert.notDeepEqual(seal(kek, secret, 'dkim:example.test:s1'), sealed, 'a fresh IV each time');
  assert.deepEqual(unseal(kek, sealed, 'dkim:example.test:s1'), secret);
  assert.throws(() => unseal(crypto.randomBytes(32), sealed, 'dkim:example.test:s1'), KekError);
  assert.throws(() => unseal(kek, sealed, 'dkim:example.test:s2'), KekError, 'bound to its label');
  const changed = Buffer.from(sealed);
  changed[changed.length - 1]! ^= 1;
  assert.throws(() => unseal(kek, changed, 'dkim:example.test:s1'), KekError);
  assert.throws(() => unseal(kek, Buffer.from('short'), 'x'), /not a sealed value/);
});
