// The 8-bit to 7-bit MIME converter (downgrade.ts): randomized round trips
// (decoding each converted part gives back its bytes; output pure ASCII,
// encoded lines at most 76 characters), MIME trees with nested multiparts and
// message/rfc822 kept as they are, the cases that cannot be converted, and
// its output bounded by its input chunks.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { simpleParser } from 'mailparser';
import { Base64Encoder, convert, DowngradeError, QpEncoder, scan } from '../src/downgrade';

/** A deterministic generator (xorshift), so that a failure can be replayed from its seed. */
function rng(seed: number): () => number {
  let x = seed || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32;
  };
}

/** Bytes that stress QP: CRLF, lone CR and LF, SP/TAB (also before line ends), "=", controls, 8-bit. */
function randomBytes(r: () => number, n: number): Buffer {
  const alphabet = [13, 10, 32, 9, 61, 0, 127, 46, 0x80, 0xc3, 0xa9, 0xff];
  const out = Buffer.alloc(n);
  for (let i = 0; i < n; i++) {
    const p = r();
    if (p < 0.1) {
      out[i] = 13;
      if (i + 1 < n) out[++i] = 10;
    } else if (p < 0.35) out[i] = alphabet[Math.floor(r() * alphabet.length)]!;
    else out[i] = 33 + Math.floor(r() * 94);
  }
  return out;
}

/** Splits into random chunks (conversion must not depend on where reads end). */
function chunks(b: Buffer, r: () => number): Buffer[] {
  const out: Buffer[] = [];
  for (let i = 0; i < b.length; ) {
    const n = 1 + Math.floor(r() * 40);
    out.push(b.subarray(i, i + n));
    i += n;
  }
  return out;
}

async function* from(parts: Buffer[]): AsyncGenerator<Buffer> {
  for (const p of parts) yield p;
}

async function collect(it: AsyncIterable<Buffer>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of it) parts.push(c);
  return Buffer.concat(parts);
}

/** A strict QP decoder (RFC 2045 6.7): "=" CRLF is a soft break, "=XX" a byte, CRLF a line break; anything else is an error. */
function qpDecode(text: Buffer): Buffer {
  const s = text.toString('latin1');
  const out: number[] = [];
  for (let i = 0; i < s.length; i++) {
    const c = s[i]!;
    if (c === '=') {
      if (s.startsWith('\r\n', i + 1)) {
        i += 2;
        continue;
      }
      const hex = s.slice(i + 1, i + 3);
      assert.match(hex, /^[0-9A-F]{2}$/, `bad escape at ${i}`);
      out.push(parseInt(hex, 16));
      i += 2;
    } else out.push(c.charCodeAt(0));
  }
  return Buffer.from(out);
}

/** Checks what RFC 2045 asks of a QP or base64 text: 7-bit printable, CRLF lines of at most 76, no trailing white space. */
function assertEncodedLines(text: Buffer, what: string): void {
  for (const b of text) assert.ok(b === 13 || b === 10 || b === 9 || (b >= 32 && b < 127), `${what}: byte ${b} in the output`);
  const s = text.toString('latin1');
  assert.doesNotMatch(s, /\r(?!\n)|(?<!\r)\n/, `${what}: bare CR or LF`);
  for (const line of s.split('\r\n')) {
    assert.ok(line.length <= 76, `${what}: line of ${line.length}: ${JSON.stringify(line)}`);
    assert.doesNotMatch(line, /[ \t]$/, `${what}: white space at a line end`);
  }
}

function qp(input: Buffer, r: () => number): Buffer {
  const e = new QpEncoder();
  return Buffer.concat([...chunks(input, r).map((c) => e.push(c)), e.end()]);
}

test('QP: decode(encode(x)) == x, pure ASCII, lines <= 76, for 2000 random inputs in random chunks', () => {
  for (let seed = 1; seed <= 2000; seed++) {
    const r = rng(seed);
    const input = randomBytes(r, Math.floor(r() * 400));
    const out = qp(input, r);
    assertEncodedLines(out, `seed ${seed}`);
    assert.deepEqual(qpDecode(out), input, `seed ${seed}`);
  }
});

test('QP: soft breaks never split an escape, white space before a line break is encoded', () => {
  const r = rng(7);
  assert.equal(qp(Buffer.from('a \r\nb\t\r\nc '), r).toString(), 'a=20\r\nb=09\r\nc=20');
  assert.equal(qp(Buffer.from('Grüße, x=1'), r).toString(), 'Gr=C3=BC=C3=9Fe, x=3D1');
  const long = qp(Buffer.alloc(200, 0xe9), r).toString();
  for (const line of long.split('\r\n')) assert.match(line, /^(=E9)+=?$/);
});

test('base64: decode(encode(x)) == x, lines of 76, for 500 random inputs in random chunks', () => {
  for (let seed = 1; seed <= 500; seed++) {
    const r = rng(seed);
    const input = randomBytes(r, Math.floor(r() * 1000));
    const e = new Base64Encoder();
    const out = Buffer.concat([...chunks(input, r).map((c) => e.push(c)), e.end()]);
    assertEncodedLines(out, `seed ${seed}`);
    const lines = out.toString('latin1').split('\r\n');
    lines.slice(0, -1).forEach((l) => assert.equal(l.length, 76));
    assert.deepEqual(Buffer.from(out.toString('latin1'), 'base64'), input, `seed ${seed}`);
  }
});

// ------------------------------------------------------------------ MIME trees

interface Leaf {
  id: number;
  /** The part's content bytes (without the CRLF that belongs to the next boundary). */
  content: Buffer;
  cte?: string;
  type: string;
}

/** Random MIME trees: multipart/mixed, alternative, digest, message/rfc822, leaves 7-bit or 8-bit, CTE declared or not. */
function randomMessage(seed: number): { message: Buffer; leaves: Leaf[] } {
  const r = rng(seed);
  const leaves: Leaf[] = [];
  let boundaries = 0;
  const line = (): string => {
    const n = Math.floor(r() * 90);
    let s = '';
    for (let i = 0; i < n; i++) {
      const p = r();
      s += p < 0.15 ? 'é' : p < 0.2 ? 'ü' : p < 0.25 ? ' ' : p < 0.27 ? '=' : p < 0.28 ? '\t' : String.fromCharCode(33 + Math.floor(r() * 94));
    }
    return s;
  };
  const content = (eightBit: boolean): Buffer => {
    const lines = Array.from({ length: Math.floor(r() * 6) }, line);
    let text = lines.join('\r\n');
    if (!eightBit) text = text.replace(/[\u0080-\uffff]/g, 'e');
    return Buffer.from(text, 'utf8');
  };
  const entity = (depth: number, inDigest: boolean): Buffer => {
    const p = r();
    if (depth < 4 && p < 0.3) {
      const b = `b${++boundaries}_${seed}`;
      const sub = r() < 0.2 ? 'digest' : r() < 0.5 ? 'alternative' : 'mixed';
      const n = 1 + Math.floor(r() * 3);
      const parts = Array.from({ length: n }, () => entity(depth + 1, sub === 'digest'));
      const cte = r() < 0.5 ? 'Content-Transfer-Encoding: 8bit\r\n' : '';
      const head = `Content-Type: multipart/${sub};\r\n boundary="${b}"\r\n${cte}`;
      return Buffer.concat([Buffer.from(`${head}\r\nThis is MIME.\r\n`), ...parts.flatMap((part) => [Buffer.from(`--${b}\r\n`), part, Buffer.from('\r\n')]), Buffer.from(`--${b}--\r\nepilogue\r\n`)]);
    }
    if (depth < 4 && (p < 0.45 || (inDigest && p < 0.6))) {
      const cte = r() < 0.5 ? 'Content-Transfer-Encoding: 8bit\r\n' : '';
      const nested = entity(depth + 1, false);
      const type = inDigest && r() < 0.5 ? '' : 'Content-Type: message/rfc822\r\n';
      return Buffer.concat([Buffer.from(`${type}${cte}\r\nFrom: nested@example.test\r\nSubject: nested\r\nMIME-Version: 1.0\r\n`), nested]);
    }
    const id = leaves.length;
    const eightBit = r() < 0.6;
    const cteChoice = r();
    const cte = cteChoice < 0.5 ? '8bit' : cteChoice < 0.7 ? '7bit' : undefined;
    const type = r() < 0.7 ? 'text/plain; charset=utf-8' : 'application/octet-stream';
    const c = content(eightBit);
    leaves.push({ id, content: c, cte, type });
    return Buffer.concat([Buffer.from(`Content-Type: ${type}\r\nX-Part: ${id}\r\n${cte ? `Content-Transfer-Encoding: ${cte}\r\n` : ''}\r\n`), c]);
  };
  const body = entity(0, false);
  const message = Buffer.concat([Buffer.from('Received: from x by y; Mon, 1 Jan 2024 00:00:00 +0000\r\nFrom: a@example.test\r\nTo: b@example.test\r\nSubject: random\r\nMIME-Version: 1.0\r\n'), body, Buffer.from('\r\n')]);
  return { message, leaves };
}

/** The part with X-Part: id in a converted message: its header fields from X-Part on, and its content up to the next boundary line (or the end). */
function findPart(out: string, id: number): { head: string; body: string; atEnd: boolean } {
  const at = out.indexOf(`X-Part: ${id}\r\n`);
  assert.ok(at >= 0, `part ${id} not found`);
  const headEnd = out.indexOf('\r\n\r\n', at);
  const rest = out.slice(headEnd + 4);
  const next = rest.search(/\r\n--b\d+_\d+/);
  return { head: out.slice(at, headEnd + 2), body: next < 0 ? rest : rest.slice(0, next), atEnd: next < 0 };
}

describe('MIME conversion', () => {
  test('random MIME trees: every part decodes to its original bytes, the output is 7-bit, headers unchanged but the CTE of converted parts', async () => {
    let converted = 0;
    for (let seed = 1; seed <= 300; seed++) {
      const { message, leaves } = randomMessage(seed);
      const r = rng(seed * 31);
      const plan = await scan(from(chunks(message, r)));
      const out = await collect(convert(from(chunks(message, r)), plan));
      const has8bit = message.some((b) => b > 127);
      assert.equal(plan.changed, has8bit, `seed ${seed}`);
      if (!has8bit) {
        assert.deepEqual(out, message, `seed ${seed}: a 7-bit message is untouched`);
        continue;
      }
      converted++;
      assert.ok(out.every((b) => b < 128), `seed ${seed}: 8-bit byte in the output`);
      for (const l of out.toString('latin1').split('\r\n')) assert.ok(l.length <= 998, `seed ${seed}: line of ${l.length}`);
      const text = out.toString('latin1');
      // The header sections the generator wrote (all ASCII) are still there, but for Content-Transfer-Encoding.
      const withoutCte = (s: string) => s.replace(/Content-Transfer-Encoding: [^\r]*\r\n/g, '');
      assert.ok(withoutCte(text).startsWith(withoutCte(message.toString('latin1').slice(0, message.indexOf('\r\n\r\n') + 2))), `seed ${seed}: top header changed`);
      for (const leaf of leaves) {
        const { head, body, atEnd } = findPart(text, leaf.id);
        const cte = /Content-Transfer-Encoding: (\S+)/.exec(head)?.[1];
        const raw = Buffer.from(body, 'latin1');
        // At the end of the message the last line end is the part's own; before a boundary it is the boundary's.
        const expected = atEnd ? Buffer.concat([leaf.content, Buffer.from('\r\n')]) : leaf.content;
        if (!leaf.content.some((b) => b > 127)) {
          assert.deepEqual(raw, expected, `seed ${seed} part ${leaf.id}: a 7-bit part is untouched`);
          assert.equal(cte, leaf.cte, `seed ${seed} part ${leaf.id}: its label too`);
          continue;
        }
        if (leaf.type.startsWith('text/')) assert.ok(cte === 'quoted-printable' || cte === 'base64', `seed ${seed} part ${leaf.id}: ${cte}`);
        else assert.equal(cte, 'base64', `seed ${seed} part ${leaf.id}`);
        assert.equal(head.match(/Content-Transfer-Encoding/g)?.length, 1, `seed ${seed} part ${leaf.id}: one CTE field`);
        assertEncodedLines(raw, `seed ${seed} part ${leaf.id}`);
        const decoded = cte === 'base64' ? Buffer.from(body, 'base64') : qpDecode(raw);
        assert.deepEqual(decoded, expected, `seed ${seed} part ${leaf.id}: decoded content differs`);
      }
    }
    assert.ok(converted > 100, `only ${converted} messages had 8-bit data`);
  });

  test('a converted message is read by a MIME parser (mailparser) as the original', async () => {
    const original = Buffer.from(
      [
        'From: a@example.test',
        'Subject: test',
        'MIME-Version: 1.0',
        'Content-Type: multipart/mixed; boundary="outer"',
        'Content-Transfer-Encoding: 8bit',
        '',
        '--outer',
        'Content-Type: text/plain; charset=utf-8',
        'Content-Transfer-Encoding: 8bit',
        '',
        'Viele Grüße aus Köln: 5 Euro sind = fünf Euro, und das ist genug für heute.  ',
        '--outer',
        'Content-Type: message/rfc822',
        'Content-Transfer-Encoding: 8bit',
        '',
        'From: b@example.test',
        'Subject: inner',
        'MIME-Version: 1.0',
        'Content-Type: text/plain; charset=utf-8',
        '',
        'Ça va très bien, merci beaucoup pour la question.',
        '--outer--',
        '',
      ].join('\r\n'),
    );
    const plan = await scan(from([original]));
    const out = await collect(convert(from([original]), plan));
    assert.ok(out.every((b) => b < 128));
    const a = await simpleParser(original);
    const b = await simpleParser(out);
    assert.equal(b.text, a.text);
    assert.equal(b.attachments.length, 1);
    const [innerA, innerB] = await Promise.all([simpleParser(a.attachments[0]!.content), simpleParser(b.attachments[0]!.content)]);
    assert.equal(innerB.text, innerA.text);
    assert.equal(innerB.text?.trim(), 'Ça va très bien, merci beaucoup pour la question.');
    const s = out.toString('latin1');
    assert.match(s, /Content-Type: multipart\/mixed; boundary="outer"\r\nContent-Transfer-Encoding: 7bit\r\n/);
    assert.match(s, /Content-Type: message\/rfc822\r\nContent-Transfer-Encoding: 7bit\r\n/);
    assert.match(s, /Content-Transfer-Encoding: quoted-printable\r\n\r\nViele Gr=C3=BC=C3=9Fe aus K=C3=B6ln: 5 Euro sind =3D f=C3=BCnf Euro, und da=\r\ns ist genug f=C3=BCr heute\. =20\r\n--outer/);
    assert.match(s, /Content-Type: text\/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n=C3=87a va tr=C3=A8s bien, merci beaucoup pour la question\.\r\n--outer--/);
  });

  test('a message without MIME headers gets MIME-Version and a Content-Transfer-Encoding; other headers stay as they are', async () => {
    const original = Buffer.from('From: a@example.test\r\nSubject: plain\r\n\r\nA naïve café, in a plain message without MIME headers.\r\n');
    const out = await collect(convert(from([original]), await scan(from([original]))));
    assert.equal(out.toString(), 'From: a@example.test\r\nSubject: plain\r\nMIME-Version: 1.0\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nA na=C3=AFve caf=C3=A9, in a plain message without MIME headers.\r\n');
  });

  test('mostly 8-bit text goes as base64, where QP would be larger', async () => {
    const original = Buffer.from('MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nПривет, мир! Как дела?\r\n');
    const out = (await collect(convert(from([original]), await scan(from([original]))))).toString();
    assert.match(out, /Content-Transfer-Encoding: base64\r\n\r\n/);
    assert.equal(Buffer.from(out.split('\r\n\r\n')[1]!, 'base64').toString(), 'Привет, мир! Как дела?\r\n');
  });

  test('what cannot be converted is a DowngradeError naming the reason', async () => {
    const cases: [string, RegExp][] = [
      ['From: Jürgen <a@example.test>\r\n\r\nhi\r\n', /8-bit data in a header field \(from\)/],
      ['Content-Type: multipart/mixed\r\nContent-Transfer-Encoding: 8bit\r\n\r\n--x\r\n\r\nä\r\n--x--\r\n', /multipart\/mixed part that cannot be parsed/],
      ['Content-Type: message/partial; id=1; number=1\r\n\r\nä\r\n', /message\/partial/],
      ['Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\nä\r\n', /declared base64/],
      ['Content-Type: text/plain\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\nä\r\n', /unknown transfer encoding "x-uuencode"/],
      ['Content-Type: multipart/mixed; boundary=x\r\n\r\npréamble\r\n--x\r\n\r\nhi\r\n--x--\r\n', /preamble/],
      ['Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nSubject: é\r\n\r\nhi\r\n--x--\r\n', /header field \(subject\)/],
    ];
    for (const [message, why] of cases) {
      await assert.rejects(scan(from([Buffer.from(message)])), (err: Error) => err instanceof DowngradeError && why.test(err.message), message);
    }
    // With SMTPUTF8 at the next hop, UTF-8 in headers is fine (the body is still converted).
    const plan = await scan(from([Buffer.from('Subject: é\r\n\r\nä\r\n')]), { allow8bitHeaders: true });
    assert.equal(plan.changed, true);
  });

  test('memory is bounded by the input chunks: a 16 MiB 8-bit part is converted chunk by chunk', async () => {
    const line = Buffer.from(`${'é'.repeat(30)} ${'a'.repeat(30)}\r\n`);
    const chunk = Buffer.concat(Array.from({ length: Math.ceil(65_536 / line.length) }, () => line));
    const n = Math.ceil((16 * 1024 * 1024) / chunk.length);
    async function* body(): AsyncGenerator<Buffer> {
      yield Buffer.from('Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n');
      for (let i = 0; i < n; i++) yield chunk;
    }
    const plan = await scan(body());
    let largest = 0;
    let total = 0;
    for await (const out of convert(body(), plan)) {
      largest = Math.max(largest, out.length);
      total += out.length;
    }
    assert.ok(total > n * chunk.length, 'converted');
    // QP at most ~3.2 times its input: each output chunk comes from one input chunk.
    assert.ok(largest <= chunk.length * 4, `an output chunk of ${largest} bytes for input chunks of ${chunk.length}`);
  });
});
