// HeaderScanner (services/ingress/src/headers.ts): where a message's header
// section ends and what it holds; submission adds Message-ID/Date by it, and
// a split message's parts get idempotency keys only when it has a Message-ID.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { HeaderScanner } from '../src/headers';

const scan = (...chunks: string[]) => {
  const s = new HeaderScanner();
  for (const c of chunks) if (s.push(Buffer.from(c, 'latin1'))) break;
  s.finish();
  return s;
};

describe('HeaderScanner', () => {
  it('finds Message-ID and Date in the header section, across chunks', () => {
    const s = scan('Subject: x\r\nMessage-', 'ID: <a@b>\r\n\r\nbody\r\n');
    assert.deepEqual([s.ended, s.hasMessageId, s.hasDate], [true, true, false]);
  });

  it('a message that starts with an empty line has an empty header section: a Message-ID line in its body does not count', () => {
    const s = scan('\r\nMessage-ID: <in-the-body@b>\r\n\r\nmore\r\n');
    assert.deepEqual([s.ended, s.hasMessageId, s.hasDate], [true, false, false]);
  });

  it('a message that is all header section ends with the message', () => {
    const s = scan('Message-ID: <a@b>\r\nDate: Mon, 7 Dec 2026 10:00:00 +0000\r\n');
    assert.deepEqual([s.ended, s.hasMessageId, s.hasDate], [true, true, true]);
  });

  it('no end within 256 KiB: not ended, and nothing is added (both count as present)', () => {
    const s = new HeaderScanner();
    assert.equal(s.push(Buffer.alloc(300 * 1024, 'a')), true);
    assert.deepEqual([s.ended, s.hasMessageId, s.hasDate], [false, true, true]);
  });
});
