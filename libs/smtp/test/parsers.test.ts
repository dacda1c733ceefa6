import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  BodyDecoder,
  decodeXtext,
  detectRoutingTrick,
  formatReply,
  parseAddress,
  parseMailParams,
  parsePath,
  parseProxyHeader,
  parseRcptParams,
  splitAddress,
  CidrSet,
  normalizeIp,
} from '../src/index';
import ipaddr from 'ipaddr.js';

const ok = (s: string, opts = {}) => {
  const r = parsePath(s, 0, opts);
  assert.ok(r.ok, `${s} should parse: ${r.ok ? '' : r.message}`);
  return r.address;
};
const bad = (s: string, opts = {}) => {
  const r = parsePath(s, 0, opts);
  assert.ok(!r.ok, `${s} should be refused`);
  return r.kind;
};

test('paths: accepted forms', () => {
  assert.equal(ok('<user@example.com>').address, 'user@example.com');
  assert.equal(ok('<first.last+tag@sub.example.com>').address, 'first.last+tag@sub.example.com');
  assert.equal(ok('<"john"@example.com>').address, 'john@example.com', 'needless quotes are dropped');
  const q = ok('<"john doe"@example.com>');
  assert.equal(q.address, '"john doe"@example.com');
  assert.equal(q.local, 'john doe');
  assert.equal(ok('<"a\\"b"@example.com>').local, 'a"b');
  assert.equal(ok('<"a@b"@example.com>').address, '"a@b"@example.com');
  assert.equal(ok('<user@[192.0.2.1]>').literal, 'ipv4');
  const v6 = ok('<user@[IPv6:2001:DB8::1]>');
  assert.equal(v6.literal, 'ipv6');
  assert.equal(v6.domain, '[IPv6:2001:db8::1]');
  assert.equal(ok('<@a.example,@b.example:user@c.example>').address, 'user@c.example', 'source route stripped');
  assert.equal(ok('<>', { allowNull: true }).isNull, true);
  assert.equal(ok('<Postmaster>', { allowPostmaster: true }).isPostmaster, true);
  assert.equal(ok('<user@xn--mnchen-3ya.de>').asciiDomain, 'xn--mnchen-3ya.de');
  const u = ok('<δοκιμή@παράδειγμα.δοκιμή>', { utf8: true });
  assert.equal(u.utf8, true);
  assert.equal(u.asciiDomain, 'xn--hxajbheg2az3al.xn--jxalpdlp');
  assert.equal(ok('<user@münchen.de>', { utf8: true }).asciiDomain, 'xn--mnchen-3ya.de');
  assert.equal(ok('<User@EXAMPLE.com>').asciiDomain, 'example.com');
  const r = parsePath('<a@b.example> SIZE=10', 0);
  assert.ok(r.ok && r.end === 13);
});

test('paths: refused forms', () => {
  bad('user@example.com');
  bad('<user@example.com');
  bad('<user @example.com>');
  bad('<user@exa mple.com>');
  bad('<>');
  bad('<postmaster>');
  bad('<user>');
  bad('<@example.com>');
  bad('<user@>');
  bad('<.user@example.com>');
  bad('<user.@example.com>');
  bad('<us..er@example.com>');
  bad('<user@example..com>');
  bad('<user@-example.com>');
  bad('<user@example-.com>');
  bad('<user@exam_ple.com>');
  bad('<user@example.com.>');
  bad('<user@[300.1.1.1]>');
  bad('<user@[1.2.3]>');
  bad('<user@[IPv6:zz::1]>');
  bad('<user@[foo:bar]>');
  bad('<user@domain@domain.com>');
  bad('<a,b@example.com>');
  bad('<"unterminated@example.com>');
  const trailing = parsePath('<user@example.com>>', 0);
  assert.ok(trailing.ok && trailing.end === 18, 'the caller sees what follows the path');
  assert.equal(bad('<ü@example.com>'), 'non_ascii');
  assert.equal(bad('<u@münchen.de>'), 'non_ascii');
  bad(`<${'a'.repeat(250)}@example.com>`);
  bad(`<a@${'b'.repeat(64)}.com>`);
  bad('<a@\u0085.com>', { utf8: true });
});

test('parseAddress, splitAddress and routing tricks', () => {
  const r = parseAddress('"a b"@example.com');
  assert.ok(r.ok && r.address.local === 'a b');
  assert.ok(!parseAddress('a@b@c').ok);
  assert.deepEqual(splitAddress('"x@y"@example.com'), { local: '"x@y"', domain: 'example.com' });
  assert.deepEqual(splitAddress('postmaster'), { local: 'postmaster', domain: '' });
  assert.equal(detectRoutingTrick('a%b@relay.example'), 'percent_hack');
  assert.equal(detectRoutingTrick('b!a@relay.example'), 'bang_path');
  assert.equal(detectRoutingTrick('"a@b"@relay.example'), 'quoted_at');
  assert.equal(detectRoutingTrick('"a\\@b"@relay.example'), 'quoted_at');
  assert.equal(detectRoutingTrick('user@domain@relay.example'), 'multiple_at');
  assert.equal(detectRoutingTrick('@a:user@relay.example'), 'source_route');
  assert.equal(detectRoutingTrick('plain.user+tag@relay.example'), undefined);
});

test('MAIL and RCPT parameters', () => {
  const ctx = { maxMessageSize: 1000, tls: false, authEnabled: false };
  const m = parseMailParams(' SIZE=10 body=8bitmime SMTPUTF8 RET=full ENVID=a+2Bb', ctx);
  assert.ok(m.ok);
  assert.deepEqual(m.params, { size: 10, body: '8BITMIME', smtputf8: true, ret: 'FULL', envid: 'a+b', requiretls: false });
  const cases: Array<[string, number]> = [
    [' SIZE=1001', 552],
    [' SIZE=abc', 501],
    [' BODY=9BIT', 501],
    [' SMTPUTF8=yes', 501],
    [' RET=ALL', 501],
    [' ENVID=a+zz', 501],
    [' ENVID=', 501],
    [' REQUIRETLS', 530],
    [' AUTH=<>', 555],
    [' X-FOO=1', 555],
    [' SIZE=1 SIZE=2', 501],
    [' BODY=8BITMIME BODY=7BIT', 501],
    [' =x', 501],
  ];
  for (const [s, code] of cases) {
    const r = parseMailParams(s, ctx);
    assert.ok(!r.ok, s);
    assert.equal(r.reply.code, code, s);
    assert.equal(r.reply.enhanced?.[0], String(code)[0], `${s} enhanced class`);
  }
  assert.ok(parseMailParams(' REQUIRETLS AUTH=<>', { ...ctx, tls: true, authEnabled: true }).ok);
  assert.ok(parseMailParams(' SMTPUTF8 BODY=8BITMIME SMTPUTF8 BODY=8bitmime', ctx).ok, 'identical repeats are tolerated');
  const rc = parseRcptParams(' NOTIFY=success,delay ORCPT=rfc822;a+2Bb@example.com');
  assert.ok(rc.ok);
  assert.deepEqual(rc.params, { notify: ['SUCCESS', 'DELAY'], orcpt: { type: 'rfc822', address: 'a+b@example.com' } });
  const u = parseRcptParams(' ORCPT=utf-8;\\x{E9}t\u00e9@example.com');
  assert.ok(u.ok && u.params.orcpt?.address === 'été@example.com');
  for (const s of [' NOTIFY=NEVER,DELAY', ' NOTIFY=SOMETIMES', ' NOTIFY=', ' ORCPT=rfc822', ' ORCPT=;a@b', ' NOTIFY=DELAY,DELAY']) {
    const r = parseRcptParams(s);
    assert.ok(!r.ok && r.reply.code === 501, s);
  }
  assert.equal(decodeXtext('a+3Db'), 'a=b');
  assert.equal(decodeXtext('a+3db'), undefined, 'hex must be upper case');
  assert.equal(decodeXtext('a=b'), undefined);
  assert.equal(decodeXtext('x+3Dy+2Bz+20+C3+A9'), 'x=y+z é', 'escapes are UTF-8 bytes');
});

test('reply formatting', () => {
  assert.equal(formatReply({ code: 250, text: 'Ok' }), '250 2.0.0 Ok\r\n');
  assert.equal(formatReply({ code: 451, enhanced: '5.3.0', text: 'x' }), '451 4.3.0 x\r\n');
  assert.equal(formatReply({ code: 550, enhanced: 'junk', text: 'x' }), '550 5.0.0 x\r\n');
  assert.equal(formatReply({ code: 250, text: ['a', 'b'] }, false), '250-a\r\n250 b\r\n');
  assert.equal(formatReply({ code: 550, enhanced: '5.1.1', text: 'a\r\nRSET' }), '550 5.1.1 a RSET\r\n');
  assert.equal(formatReply({ code: 354, text: 'go' }), '354 go\r\n');
  assert.equal(formatReply({ code: 999, text: 'x' }), '451 4.0.0 x\r\n');
});

function decodeAll(parts: Buffer[], dot = true, maxLineLength = 1000, maxSize = 0) {
  const d = new BodyDecoder(dot, { maxLineLength, maxSize, rejectNul: true });
  const out: Buffer[] = [];
  let end = -1;
  let consumedBefore = 0;
  for (const p of parts) {
    const e = d.feed(p, (s) => out.push(Buffer.from(s)));
    if (e >= 0) {
      end = consumedBefore + e;
      break;
    }
    consumedBefore += p.length;
  }
  // After a violation the body is thrown away, so only its absence matters.
  return { body: d.violation ? '(refused)' : Buffer.concat(out).toString('latin1'), end, violation: d.violation };
}

test('DATA decoder: unstuffing and end detection agree for every split point', () => {
  const samples = [
    'a\r\n..b\r\n.\r\nNEXT',
    '.\r\nNEXT',
    '..\r\n...\r\n.x\r\n\r\n.\r\n',
    'line\r\n\r\n.\r\n',
    `${'x'.repeat(998)}\r\n.\r\n`,
    'a\nb\r\n.\r\n',
    'a\r.\r\nb\r\n.\r\n',
    'a\r\n.\r\r\n.\r\n',
    'a\r\n.\nx\r\n.\r\n',
    'a\r\n\0.\r\nb\r\n.\r\n',
    `${'y'.repeat(999)}\r\n.\r\n`,
    'x\r\n.\r',
  ];
  for (const s of samples) {
    const whole = decodeAll([Buffer.from(s, 'latin1')]);
    for (let i = 1; i < s.length; i++) {
      const split = decodeAll([Buffer.from(s.slice(0, i), 'latin1'), Buffer.from(s.slice(i), 'latin1')]);
      assert.deepEqual(split, whole, `${JSON.stringify(s)} split at ${i}`);
    }
    const bytes = decodeAll([...Buffer.from(s, 'latin1')].map((b) => Buffer.from([b])));
    assert.deepEqual(bytes, whole, `${JSON.stringify(s)} byte by byte`);
  }
  assert.deepEqual(decodeAll([Buffer.from('a\r\n..b\r\n.\r\nNEXT')]), { body: 'a\r\n.b\r\n', end: 11, violation: undefined });
  assert.deepEqual(decodeAll([Buffer.from('a\nb\r\n.\r\n')]).violation, 'bare_line_ending');
  assert.deepEqual(decodeAll([Buffer.from('a\r\n\0.\r\nb\r\n.\r\n')]).violation, 'nul');
  assert.equal(decodeAll([Buffer.from('a\r\n.\r\r\n.\r\n')]).end, 10);
  assert.equal(decodeAll([Buffer.from(`${'y'.repeat(999)}\r\n.\r\n`)]).violation, 'line_too_long');
  assert.equal(decodeAll([Buffer.from(`${'y'.repeat(50)}\r\n.\r\n`)], true, 1000, 40).violation, 'size');
  assert.equal(decodeAll([Buffer.from('x\r\n.\r')]).end, -1, 'not ended without the final LF');
});

test('DATA decoder: random bodies round-trip through dot-stuffing in random pieces', () => {
  let seed = 42;
  const rnd = (n: number) => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed % n;
  };
  const alphabet = ['.', 'a', 'b', ' ', '\r\n', '\r\n.', '..', '\u00e9'];
  for (let round = 0; round < 200; round++) {
    let body = '';
    const len = rnd(60);
    for (let i = 0; i < len; i++) body += alphabet[rnd(alphabet.length)];
    if (!body.endsWith('\r\n')) body += '\r\n';
    if (body === '\r\n') body = 'x\r\n';
    const stuffed = body.replace(/(^|\r\n)\./g, '$1..') + '.\r\n';
    const wire = Buffer.from(stuffed, 'utf8');
    const parts: Buffer[] = [];
    for (let i = 0; i < wire.length; ) {
      const n = 1 + rnd(7);
      parts.push(wire.subarray(i, i + n));
      i += n;
    }
    const r = decodeAll(parts);
    assert.equal(r.violation, undefined, JSON.stringify(body));
    assert.equal(r.end, wire.length);
    assert.equal(Buffer.from(r.body, 'latin1').toString('utf8'), body);
  }
});

test('DATA and BDAT decoders: passing runs of ordinary lines at once changes no outcome', () => {
  let seed = 7;
  const rnd = (n: number) => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return (seed >>> 8) % n; // the low bits of this generator cycle
  };
  // Mostly ordinary lines (so that long runs take the fast path), with now
  // and then a dot line, the end marker, a bare CR or LF, a NUL or a line
  // over the limit, anywhere in the body and across piece boundaries.
  let anomalies = true;
  const line = () => {
    const r = rnd(anomalies ? 100 : 25);
    if (r < 3) return '.' + 'd'.repeat(rnd(80)) + '\r\n';
    if (r === 3) return 'M'.repeat(997 + rnd(2)) + '\r\n'; // at the limit: fine
    if (anomalies && r === 4) return 'x'.repeat(rnd(40)) + '\n';
    if (anomalies && r === 5) return 'y'.repeat(rnd(40)) + '\r' + 'z'.repeat(rnd(3)) + '\r\n';
    if (anomalies && r === 6) return 'n\0' + 'm'.repeat(rnd(40)) + '\r\n';
    if (anomalies && r === 7) return 'L'.repeat(999 + rnd(20)) + '\r\n';
    if (anomalies && r === 8) return '.\r\n';
    return 'a'.repeat(rnd(120)) + '\r\n';
  };
  const run = (wire: Buffer, cuts: number[], dot: boolean, maxLineLength: number, fast: boolean) => {
    BodyDecoder.fastLines = fast;
    try {
      const d = new BodyDecoder(dot, { maxLineLength, maxSize: 200_000, rejectNul: true });
      const out: Buffer[] = [];
      let end = -1;
      let at = 0;
      for (const cut of [...cuts, wire.length]) {
        const e = d.feed(wire.subarray(at, cut), (seg) => out.push(Buffer.from(seg)));
        if (e >= 0) {
          end = at + e;
          break;
        }
        at = cut;
      }
      return { end, violation: d.violation, size: d.size, seen: d.seen, body: d.violation ? '' : Buffer.concat(out).toString('latin1') };
    } finally {
      BodyDecoder.fastLines = true;
    }
  };
  let fastRuns = 0;
  for (let round = 0; round < 400; round++) {
    let body = '';
    anomalies = rnd(100) < 50;
    const lines = 1 + rnd(300);
    for (let k = 0; k < lines; k++) body += line();
    const wire = Buffer.from(body + (rnd(4) ? '.\r\n' : ''), 'latin1');
    const cuts = [...new Set(Array.from({ length: rnd(6) }, () => rnd(wire.length)))].sort((a, b) => a - b).filter((c) => c > 0);
    const dot = rnd(5) !== 0;
    const maxLineLength = rnd(6) === 0 ? 0 : 1000;
    const walked = run(wire, cuts, dot, maxLineLength, false);
    const fast = run(wire, cuts, dot, maxLineLength, true);
    assert.deepEqual(fast, walked, `round ${round}`);
    if (!walked.violation && walked.size > 4096) fastRuns++;
  }
  assert.ok(fastRuns > 50, `enough clean long bodies to exercise the fast path (${fastRuns})`);
});

test('PROXY header parsing and CIDR sets', () => {
  const v1 = parseProxyHeader(Buffer.from('PROXY TCP4 1.2.3.4 5.6.7.8 1000 25\r\nEHLO'));
  assert.deepEqual(v1, { status: 'ok', consumed: 36, source: { address: '1.2.3.4', port: 1000 }, destination: { address: '5.6.7.8', port: 25 } });
  assert.equal(parseProxyHeader(Buffer.from('PROXY TCP4 1.2.3.4')).status, 'incomplete');
  assert.equal(parseProxyHeader(Buffer.from('PROXY TCP4 1.2.3.4 ::1 1000 25\r\n')).status, 'error');
  assert.equal(parseProxyHeader(Buffer.from('PROXY TCP4 1.2.3.4 5.6.7.8 99999 25\r\n')).status, 'error');
  assert.equal(parseProxyHeader(Buffer.from('EHLO x\r\n')).status, 'error');
  assert.deepEqual(parseProxyHeader(Buffer.from('PROXY UNKNOWN\r\n')), { status: 'ok', consumed: 15 });
  const sig = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
  const v2 = Buffer.concat([sig, Buffer.from([0x21, 0x11, 0, 12, 10, 0, 0, 1, 10, 0, 0, 2, 0x13, 0x88, 0, 25])]);
  assert.deepEqual(parseProxyHeader(v2), { status: 'ok', consumed: 28, source: { address: '10.0.0.1', port: 5000 }, destination: { address: '10.0.0.2', port: 25 } });
  assert.equal(parseProxyHeader(v2.subarray(0, 20)).status, 'incomplete');
  const local = Buffer.concat([sig, Buffer.from([0x20, 0x00, 0, 0])]);
  assert.deepEqual(parseProxyHeader(local), { status: 'ok', consumed: 16 });
  const set = new CidrSet(['10.0.0.0/8', '::1', '2001:db8::/32']);
  assert.ok(set.has('10.1.2.3'));
  assert.ok(set.has('::ffff:10.1.2.3'));
  assert.ok(set.has('::1'));
  assert.ok(set.has('2001:db8::5'));
  assert.ok(!set.has('11.0.0.1'));
  assert.ok(!set.has('not-an-ip'));
});

test('normalizeIp: canonical forms, the dotted-quad fast path agreeing with the parser', () => {
  assert.equal(normalizeIp('::ffff:192.0.2.7'), '192.0.2.7');
  assert.equal(normalizeIp('2001:DB8:0:0::1'), '2001:db8::1');
  assert.equal(normalizeIp('not an address'), 'not an address');
  // Written by inet_ntop, these are canonical already; the parser must agree.
  for (const a of ['0.0.0.0', '127.0.0.1', '192.0.2.255', '255.255.255.255', '10.20.30.40', '1.2.3.4']) {
    assert.equal(normalizeIp(a), a);
    assert.equal(normalizeIp(`::ffff:${a}`), a);
  }
  // Not in the fast path's form: left to the parser, with the same answer as without the fast path.
  for (const a of ['010.0.0.1', '256.1.1.1', '1.2.3', '1.2.3.4.5', ' 1.2.3.4', '0x7f.0.0.1', '127.1']) {
    let expected: string;
    try {
      expected = ipaddr.process(a).toString();
    } catch {
      expected = a;
    }
    assert.equal(normalizeIp(a), expected, a);
  }
});
