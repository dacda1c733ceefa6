// Standard Webhooks signing (https://www.standardwebhooks.com/): the secret
// is "whsec_" + base64 of its bytes; a request carries webhook-id,
// webhook-timestamp (unix seconds) and webhook-signature "v1,<base64 of
// HMAC-SHA256(secret bytes, `${id}.${timestamp}.${body}`)>".
import crypto from 'node:crypto';

export const SECRET_PREFIX = 'whsec_';

/** 32 random bytes and their "whsec_..." form, shown to the operator once. */
export function newSecret(): { bytes: Buffer; text: string } {
  const bytes = crypto.randomBytes(32);
  return { bytes, text: SECRET_PREFIX + bytes.toString('base64') };
}

export function signature(secret: Buffer, id: string, timestamp: number, body: string | Buffer): string {
  return 'v1,' + crypto.createHmac('sha256', secret).update(`${id}.${timestamp}.`).update(body).digest('base64');
}

/** The headers of one signed request. */
export function signedHeaders(secret: Buffer, id: string, body: Buffer, now = Date.now()): Record<string, string> {
  const timestamp = Math.floor(now / 1000);
  return {
    'webhook-id': id,
    'webhook-timestamp': String(timestamp),
    'webhook-signature': signature(secret, id, timestamp, body),
  };
}

/** The id of a batch request: the same set of events gives the same id, so a retried batch can be recognised. */
export function batchId(endpointId: string, eventIds: readonly string[]): string {
  const h = crypto.createHash('sha256').update(endpointId);
  for (const id of [...eventIds].sort()) h.update('\0').update(id);
  return `batch_${h.digest('base64url').slice(0, 32)}`;
}
