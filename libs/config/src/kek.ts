// A key-encryption key (KEK) from the environment, and sealing secrets with
// it (AES-256-GCM) so that what is stored at rest (a DKIM private key in
// Postgres) is useless without the KEK, which lives in a Kubernetes Secret.
// Policy seals, delivery opens: one format, one place.
import crypto from 'node:crypto';
import { z } from 'zod';

/** Sealed secret layout: version byte, 12-byte IV, 16-byte GCM tag, ciphertext. */
const VERSION = 1;
const IV_BYTES = 12;
const TAG_BYTES = 16;

export class KekError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'KekError';
  }
}

/** Base64 of exactly 32 random bytes (`openssl rand -base64 32`); the value is never echoed. */
export const keyEncryptionKey = () =>
  z.string().transform((value, ctx): Buffer => {
    const v = value.trim();
    const key = /^[A-Za-z0-9+/]+={0,2}$/.test(v) ? Buffer.from(v, 'base64') : Buffer.alloc(0);
    if (key.length !== 32) {
      ctx.addIssue({ code: 'custom', message: 'expected base64 of 32 bytes (make one with: openssl rand -base64 32)' });
      return z.NEVER;
    }
    return key;
  });

/**
 * Encrypts `plaintext` under `kek`. `aad` (e.g. "dkim:example.com:s1") is
 * authenticated, not stored: a sealed value copied to another row does not open.
 */
export function seal(kek: Buffer, plaintext: Buffer, aad: string): Buffer {
  const iv = crypto.randomBytes(IV_BYTES);
  const cipher = crypto.createCipheriv('aes-256-gcm', kek, iv);
  cipher.setAAD(Buffer.from(aad, 'utf8'));
  const body = Buffer.concat([cipher.update(plaintext), cipher.final()]);
  return Buffer.concat([Buffer.from([VERSION]), iv, cipher.getAuthTag(), body]);
}

/** Decrypts what `seal` made with the same `kek` and `aad`; a wrong key or a changed value throws KekError. */
export function unseal(kek: Buffer, sealed: Uint8Array, aad: string): Buffer {
  const buf = Buffer.from(sealed.buffer, sealed.byteOffset, sealed.byteLength);
  if (buf.length < 1 + IV_BYTES + TAG_BYTES || buf[0] !== VERSION) throw new KekError('not a sealed value of a known format');
  const iv = buf.subarray(1, 1 + IV_BYTES);
  const tag = buf.subarray(1 + IV_BYTES, 1 + IV_BYTES + TAG_BYTES);
  const decipher = crypto.createDecipheriv('aes-256-gcm', kek, iv);
  decipher.setAAD(Buffer.from(aad, 'utf8'));
  decipher.setAuthTag(tag);
  try {
    return Buffer.concat([decipher.update(buf.subarray(1 + IV_BYTES + TAG_BYTES)), decipher.final()]);
  } catch (err) {
    throw new KekError('does not decrypt with this key-encryption key (another key, or the value was changed)', { cause: err });
  }
}
