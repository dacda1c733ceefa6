// WireBody (services/delivery/src/smtp-client.ts): the body as it goes on
// the wire, whatever the chunking. Chunks that need no change pass as they
// are; the others are rewritten byte by byte. Both must give, over any
// split of a body, what the byte-by-byte rules give over the whole body.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { WireBody } from '../src/smtp-client';

/** The rules, written plainly over a whole body: the reference. */
function reference(body: Buffer, dotStuff: boolean): Buffer {
  const out: number[] = [];
  let atLineStart = true;
  for (let i = 0; i < body.length; i++) {
    const b = body[i]!;
    if (b === 13 || b === 10) {
      if (b === 13 && body[i + 1] === 10) i++; // CR LF is one line ending
      out.push(13, 10);
      atLineStart = true;
      continue;
    }
    if (dotStuff && atLineStart && b === 46) out.push(46);
    atLineStart = false;
    out.push(b);
  }
  if (!atLineStart) out.push(13, 10);
  if (dotStuff) out.push(46, 13, 10);
  return Buffer.from(out);
}

function throughWireBody(chunks: Buffer[], dotStuff: boolean): { wire: Buffer; passed: number } {
  const w = new WireBody(dotStuff);
  const parts: Buffer[] = [];
  let passed = 0;
  for (const c of chunks) {
    const out = w.push(c);
    if (out === c && c.length > 0) passed++;
    parts.push(Buffer.from(out)); // copied: a chunk passed as is must not be changed later
  }
  parts.push(w.end());
  return { wire: Buffer.concat(parts), passed };
}

/** A deterministic generator, so that a failure is reproducible. */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

describe('WireBody', () => {
  test('a clean body passes as it is (no copy) and ends with CRLF.CRLF', () => {
    const body = Buffer.from('Subject: x\r\n\r\nline one\r\nline two\r\n');
    const w = new WireBody(true);
    assert.equal(w.push(body), body, 'the same buffer');
    assert.equal(w.end().toString(), '.\r\n');
  });

  test('edges between chunks: a dot after a CRLF that ended the chunk before, a CR LF split, a bare LF first', () => {
    const cases: [string[], string][] = [
      [['a\r\n', '.b\r\n'], 'a\r\n..b\r\n.\r\n'],
      [['a\r', '\nb'], 'a\r\nb\r\n.\r\n'],
      [['a\r', '.b'], 'a\r\n..b\r\n.\r\n'],
      [['a', '\nb'], 'a\r\nb\r\n.\r\n'],
      [['a\r\n', '\n'], 'a\r\n\r\n.\r\n'],
      [['.', '.\r\n'], '...\r\n.\r\n'],
      [['a\r\n.', '\r\n'], 'a\r\n..\r\n.\r\n'],
    ];
    for (const [chunks, want] of cases) {
      const { wire } = throughWireBody(
        chunks.map((c) => Buffer.from(c)),
        true,
      );
      assert.equal(wire.toString(), want, JSON.stringify(chunks));
    }
  });

  test('any split of any body gives what the rules give over the whole body (DATA and BDAT)', () => {
    const next = rng(42);
    const alphabet = ['a', 'b', '.', '\r', '\n', '\r\n', '\r\n', '\r\n.', 'xyz\r\n'];
    let passedTotal = 0;
    for (let round = 0; round < 3000; round++) {
      const parts: string[] = [];
      const len = 1 + Math.floor(next() * 40);
      for (let i = 0; i < len; i++) parts.push(alphabet[Math.floor(next() * alphabet.length)]!);
      const body = Buffer.from(parts.join(''), 'latin1');
      const chunks: Buffer[] = [];
      for (let at = 0; at < body.length; ) {
        const size = 1 + Math.floor(next() * 12);
        chunks.push(body.subarray(at, at + size));
        at += size;
      }
      for (const dotStuff of [true, false]) {
        const { wire, passed } = throughWireBody(chunks, dotStuff);
        passedTotal += passed;
        assert.equal(
          wire.toString('latin1'),
          reference(body, dotStuff).toString('latin1'),
          `body ${JSON.stringify(body.toString('latin1'))} in ${JSON.stringify(chunks.map((c) => c.toString('latin1')))}, dotStuff ${dotStuff}`,
        );
      }
    }
    assert.ok(passedTotal > 1000, `the as-is path was taken (${passedTotal} chunks)`);
  });

  test('8-bit and NUL octets go through unchanged', () => {
    const body = Buffer.from([0xe9, 0x00, 0xff, 0x0d, 0x0a, 0x2e, 0x80, 0x0d, 0x0a]);
    const { wire } = throughWireBody([body], true);
    assert.deepEqual(wire, Buffer.from([0xe9, 0x00, 0xff, 0x0d, 0x0a, 0x2e, 0x2e, 0x80, 0x0d, 0x0a, 0x2e, 0x0d, 0x0a]));
  });
});
