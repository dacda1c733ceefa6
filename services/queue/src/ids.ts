// Queue ids: 16 characters of Crockford base32, 10 for the millisecond time
// and 6 random, so they are short, unique across replicas and sort by time
// (an age filter is an id range).
import crypto from 'node:crypto';
import { MalformedQueueIdError } from './errors';

// Crockford's alphabet is in ASCII order, so ids sort like their numbers.
const ALPHABET = '0123456789ABCDEFGHJKMNPQRSTVWXYZ';

let lastMs = 0;
let counter = 0;

function encode(value: number, length: number): string {
  let out = '';
  for (let i = 0; i < length; i++) {
    out = ALPHABET[value % 32] + out;
    value = Math.floor(value / 32);
  }
  return out;
}

/** A new id for `now` (ms since epoch). */
export function newId(now = Date.now()): string {
  // Within one millisecond of one process, a counter keeps ids distinct;
  // the random start keeps replicas apart.
  if (now !== lastMs) {
    lastMs = now;
    counter = crypto.randomInt(0, 2 ** 29);
  } else counter = (counter + 1) % 2 ** 30;
  return encode(now, 10) + encode(counter, 6);
}

/** The smallest id that could have been made at `ms` (for time-range filters). */
export function idFloor(ms: number): string {
  return encode(Math.max(0, Math.floor(ms)), 10) + ALPHABET[0]!.repeat(6);
}

export function isQueueId(s: string): boolean {
  return s.length === 16 && [...s].every((c) => ALPHABET.includes(c));
}

/** An operator's queue id as stored: Crockford base32 reads the same in either case; anything else is no queue id at all. */
export function parseQueueId(value: string): string {
  const id = value.trim().toUpperCase();
  if (!isQueueId(id)) throw new MalformedQueueIdError(value);
  return id;
}

/** Recipient ids in jobs and results: "<queue id>.<index>". */
export function recipientId(queueId: string, idx: number): string {
  return `${queueId}.${idx}`;
}

export function parseRecipientId(id: string): { queueId: string; idx: number } | undefined {
  const dot = id.lastIndexOf('.');
  if (dot < 1) return undefined;
  const idx = Number(id.slice(dot + 1));
  if (!Number.isInteger(idx) || idx < 0) return undefined;
  return { queueId: id.slice(0, dot), idx };
}
