// Reports are parsed by two independent MIME parsers (mailparser, and
// Python's email package via parse_report.py) and checked field by field.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { Readable } from 'node:stream';
import { simpleParser, type ParsedMail } from 'mailparser';
import { BodyType, DsnNotify, DsnRet, ReportKind, ReportRequest } from '@tern/proto';
import {
  buildReport,
  NoReportError,
  openOriginal,
  orcptParam,
  recipientsOwedReport,
  reportOwed,
  reportToBuffer,
  returnMode,
  whyNoReport,
  xtextDecode,
  xtextEncode,
  type ReportOptions,
  type ReturnMode,
} from '../src/index';

interface PyPart {
  type: string;
  cte: string | null;
  description: string | null;
  defects: string[];
  text?: string;
  charset?: string;
  blocks?: Array<Array<[string, string]>>;
  inner_headers?: Array<[string, string]>;
  inner_body?: string | null;
  raw?: string;
}
interface PyReport {
  headers: Array<[string, string]>;
  content_type: string;
  params: Record<string, string>;
  defects: string[];
  parts: PyPart[];
}

const SCRIPT = path.join(__dirname, 'parse_report.py');

function pyParse(raw: Buffer): PyReport {
  return JSON.parse(execFileSync('python3', [SCRIPT], { input: raw, maxBuffer: 64 * 1024 * 1024 }).toString('utf8')) as PyReport;
}

/** All values of a field in a [name, value] list (case-insensitive). */
function all(fields: Array<[string, string]>, name: string): string[] {
  return fields.filter(([n]) => n.toLowerCase() === name.toLowerCase()).map(([, v]) => v);
}
function one(fields: Array<[string, string]>, name: string): string | undefined {
  const v = all(fields, name);
  assert.ok(v.length <= 1, `${name} appears ${v.length} times`);
  return v[0];
}

const ARRIVAL = new Date('2026-03-02T08:00:00Z');
const ATTEMPT = new Date('2026-03-02T08:05:07Z');
const NOW = new Date('2026-03-02T09:00:00Z');

const ORIGINAL = [
  'Received: from client.example (client.example [192.0.2.10])',
  '\tby mx.tern.test (Tern) with ESMTP id Q0001',
  '\tfor <rcpt@example.net>; Mon, 02 Mar 2026 08:00:00 +0000',
  'From: Sender <sender@example.org>',
  'To: rcpt@example.net',
  'Subject: Quarterly numbers',
  'Message-ID: <orig-123@example.org>',
  'Date: Mon, 02 Mar 2026 07:59:58 +0000',
  'MIME-Version: 1.0',
  'Content-Type: text/plain; charset=us-ascii',
  '',
  'Hello,',
  '',
  'the numbers are attached.',
  '',
].join('\r\n');

function baseRequest(over: Partial<ReportRequest> = {}): ReportRequest {
  return ReportRequest.fromPartial({
    eventId: 'evt-1',
    queueId: 'Q0001',
    kind: ReportKind.REPORT_KIND_FAILED,
    size: Buffer.byteLength(ORIGINAL),
    envelope: { sender: 'sender@example.org', arrivalTime: ARRIVAL, ret: DsnRet.DSN_RET_FULL },
    recipients: [
      {
        address: 'rcpt@example.net',
        action: 'failed',
        status: '5.1.1',
        remoteMta: 'mx1.example.net',
        diagnostic: { code: 550, enhanced: '5.1.1', text: '<rcpt@example.net>: Recipient address rejected: User unknown in virtual mailbox table' },
        lastAttemptAt: ATTEMPT,
      },
    ],
    ...over,
  });
}

/** A source that yields `data` in small pieces, like a gRPC stream. */
async function* pieces(data: string | Buffer, size = 7): AsyncGenerator<Buffer> {
  const buf = Buffer.isBuffer(data) ? data : Buffer.from(data, 'utf8');
  for (let i = 0; i < buf.length; i += size) yield buf.subarray(i, i + size);
}

interface Made {
  raw: Buffer;
  mail: ParsedMail;
  py: PyReport;
  report: ReturnType<typeof buildReport>;
}

async function make(req: ReportRequest, opts: Partial<ReportOptions> & { source?: string | Buffer | null; mode?: ReturnMode } = {}): Promise<Made> {
  const source = opts.source === undefined ? ORIGINAL : opts.source;
  const original = source === null ? undefined : await openOriginal(pieces(source));
  const report = buildReport(req, {
    reportingMta: 'mx.tern.test',
    now: () => NOW,
    original,
    ret: opts.mode ?? returnMode(req, { fullReturnLimit: 50_000 }),
    ...opts,
  });
  const raw = await reportToBuffer(report);
  return { raw, mail: await simpleParser(raw), py: pyParse(raw), report };
}

/** Checks what every report has, whatever its kind. */
function checkCommon(m: Made, expect: { subject: string; global?: boolean; to?: string }) {
  const h = m.py.headers;
  assert.deepEqual(m.py.defects, []);
  assert.equal(one(h, 'From'), 'Mail Delivery System <MAILER-DAEMON@mx.tern.test>');
  assert.equal(m.mail.from?.value[0]?.address, 'MAILER-DAEMON@mx.tern.test');
  assert.equal(m.mail.from?.value[0]?.name, 'Mail Delivery System');
  assert.equal(m.mail.to && !Array.isArray(m.mail.to) ? m.mail.to.value[0]?.address : undefined, expect.to ?? 'sender@example.org');
  assert.equal(one(h, 'Subject'), expect.subject);
  assert.equal(m.mail.subject, expect.subject);
  assert.equal(one(h, 'Auto-Submitted'), 'auto-replied');
  assert.equal(one(h, 'MIME-Version'), '1.0');
  assert.equal(m.mail.date?.toISOString(), NOW.toISOString());
  assert.match(one(h, 'Message-ID') ?? '', /^<[^<>@\s]+@mx\.tern\.test>$/);
  assert.equal(m.mail.messageId, one(h, 'Message-ID'));
  assert.equal(m.py.content_type, 'multipart/report');
  assert.equal(m.py.params['report-type'], expect.global ? 'global-delivery-status' : 'delivery-status');
  assert.equal(m.py.parts.length, 3);
  assert.equal(m.py.parts[0]!.type, 'text/plain');
  assert.equal(m.py.parts[1]!.type, expect.global ? 'message/global-delivery-status' : 'message/delivery-status');
  for (const p of m.py.parts) assert.deepEqual(p.defects, [], `${p.type} has no MIME defects`);
  // Every line is CRLF-terminated and within the SMTP limit.
  const text = m.raw.toString('latin1');
  assert.ok(!/[^\r]\n/.test(text), 'no bare LF');
  assert.ok(text.split('\r\n').every((l) => l.length <= 998), 'no line over 998 octets');
}

/** Text with line breaks and runs of white space collapsed (wrapping is not the point). */
function flat(text: string): string {
  return text.replace(/\s+/g, ' ');
}

function perMessage(m: Made): Array<[string, string]> {
  return m.py.parts[1]!.blocks![0]!;
}
function perRecipient(m: Made): Array<Array<[string, string]>> {
  return m.py.parts[1]!.blocks!.slice(1);
}

test('5xx at RCPT: failed report with every RFC 3464 field, the text and the full original (RET=FULL)', async () => {
  const m = await make(baseRequest());
  checkCommon(m, { subject: 'Undelivered Mail Returned to Sender' });
  assert.equal(one(m.py.headers, 'In-Reply-To'), '<orig-123@example.org>');
  assert.equal(one(m.py.headers, 'References'), '<orig-123@example.org>');
  assert.equal(m.mail.inReplyTo, '<orig-123@example.org>');

  const pm = perMessage(m);
  assert.equal(one(pm, 'Reporting-MTA'), 'dns; mx.tern.test');
  assert.equal(one(pm, 'Arrival-Date'), 'Mon, 02 Mar 2026 08:00:00 +0000');
  assert.equal(one(pm, 'Original-Envelope-Id'), undefined, 'no ENVID given, no field');
  assert.equal(one(pm, 'X-Tern-Queue-ID'), 'Q0001');
  const [r, ...more] = perRecipient(m);
  assert.equal(more.length, 0);
  assert.equal(one(r!, 'Final-Recipient'), 'rfc822; rcpt@example.net');
  assert.equal(one(r!, 'Original-Recipient'), undefined);
  assert.equal(one(r!, 'Action'), 'failed');
  assert.equal(one(r!, 'Status'), '5.1.1');
  assert.equal(one(r!, 'Remote-MTA'), 'dns; mx1.example.net');
  assert.equal(one(r!, 'Diagnostic-Code'), 'smtp; 550 5.1.1 <rcpt@example.net>: Recipient address rejected: User unknown in virtual mailbox table');
  assert.equal(one(r!, 'Last-Attempt-Date'), 'Mon, 02 Mar 2026 08:05:07 +0000');
  assert.equal(one(r!, 'Will-Retry-Until'), undefined);

  const text = m.py.parts[0]!.text!;
  assert.match(text, /mail system at host mx\.tern\.test/);
  assert.match(text, /could not be delivered/);
  assert.match(text.replace(/\s+/g, ' '), /<rcpt@example\.net>: host mx1\.example\.net said: 550 5\.1\.1 <rcpt@example\.net>: Recipient address rejected: User unknown in virtual mailbox table/);
  assert.match(flat(text), /check it for typing mistakes/, 'advice for a 5.1.x status');
  assert.match(text, /postmaster@mx\.tern\.test/);
  assert.equal(m.mail.text?.includes('could not be delivered'), true);

  const third = m.py.parts[2]!;
  assert.equal(third.type, 'message/rfc822');
  assert.equal(third.cte ?? '7bit', '7bit');
  assert.equal(one(third.inner_headers!, 'Subject'), 'Quarterly numbers');
  assert.equal(third.inner_body, 'Hello,\r\n\r\nthe numbers are attached.\r\n');
  // mailparser shows the returned message byte for byte.
  const attachment = m.mail.attachments.find((a) => a.contentType === 'message/rfc822');
  assert.ok(attachment);
  assert.equal(attachment.content.toString('utf8'), ORIGINAL);
  assert.equal(m.report.returned, 'full');
  assert.equal(m.report.eightBit, false);
  assert.equal(m.report.global, false);
});

test('5xx at DATA for several recipients: one report, each recipient with the reply, headers only with RET=HDRS', async () => {
  const reply = { code: 554, enhanced: '5.7.1', text: 'Message rejected as spam by Content Filtering' };
  const req = baseRequest({
    envelope: { ...baseRequest().envelope!, ret: DsnRet.DSN_RET_HDRS },
    recipients: ['a@example.net', 'b@example.net', 'c@example.net'].map((address) => ({
      address,
      orcpt: '',
      action: 'failed',
      status: '5.7.1',
      remoteMta: 'mx1.example.net',
      diagnostic: reply,
      lastAttemptAt: ATTEMPT,
      willRetryUntil: undefined,
      bounceClass: '',
    })),
  });
  assert.equal(returnMode(req, { fullReturnLimit: 50_000 }), 'headers');
  const m = await make(req);
  checkCommon(m, { subject: 'Undelivered Mail Returned to Sender' });
  const rs = perRecipient(m);
  assert.deepEqual(rs.map((r) => one(r, 'Final-Recipient')), ['rfc822; a@example.net', 'rfc822; b@example.net', 'rfc822; c@example.net']);
  for (const r of rs) {
    assert.equal(one(r, 'Action'), 'failed');
    assert.equal(one(r, 'Status'), '5.7.1');
    assert.equal(one(r, 'Diagnostic-Code'), 'smtp; 554 5.7.1 Message rejected as spam by Content Filtering');
  }
  const text = flat(m.py.parts[0]!.text!);
  for (const a of ['a', 'b', 'c']) assert.match(text, new RegExp(`<${a}@example\\.net>: host mx1\\.example\\.net said: 554 5\\.7\\.1 Message rejected as spam`));
  assert.match(text, /refused the message by policy/);
  assert.match(text, /header of the message is attached/);
  const third = m.py.parts[2]!;
  assert.equal(third.type, 'text/rfc822-headers');
  assert.equal(third.description, 'Undelivered Message Headers');
  assert.equal(one(third.inner_headers!, 'Message-ID'), '<orig-123@example.org>');
  assert.ok(!third.raw!.includes('the numbers are attached'), 'no body in a headers-only return');
  const headerPart = m.mail.attachments.find((a) => a.contentType === 'text/rfc822-headers');
  assert.ok(headerPart);
  assert.equal(headerPart.content.toString('utf8'), ORIGINAL.slice(0, ORIGINAL.indexOf('\r\n\r\n') + 2));
  assert.equal(m.report.returned, 'headers');
});

test('expiry: failed with the last temporary reply, or our own diagnostic when the host never answered', async () => {
  const req = baseRequest({
    envelope: { ...baseRequest().envelope!, ret: DsnRet.DSN_RET_UNSPECIFIED },
    recipients: [
      {
        address: 'slow@example.net',
        orcpt: '',
        action: 'failed',
        status: '4.4.7',
        remoteMta: 'mx.example.net',
        diagnostic: { code: 451, enhanced: '4.3.0', text: 'Temporary local problem - please try later' },
        lastAttemptAt: ATTEMPT,
        willRetryUntil: undefined,
        bounceClass: '',
      },
      {
        address: 'down@example.com',
        orcpt: '',
        action: 'failed',
        status: '4.4.1',
        remoteMta: '',
        diagnostic: { code: 0, enhanced: '', text: 'connect to mx.example.com[198.51.100.7]:25: Connection refused' },
        lastAttemptAt: ATTEMPT,
        willRetryUntil: undefined,
        bounceClass: '',
      },
    ],
  });
  assert.equal(returnMode(req, { fullReturnLimit: 50_000 }), 'full', 'small message without RET: full');
  const m = await make(req);
  checkCommon(m, { subject: 'Undelivered Mail Returned to Sender' });
  const [slow, down] = perRecipient(m);
  assert.equal(one(slow!, 'Action'), 'failed');
  assert.equal(one(slow!, 'Status'), '4.4.7');
  assert.equal(one(slow!, 'Diagnostic-Code'), 'smtp; 451 4.3.0 Temporary local problem - please try later');
  assert.equal(one(down!, 'Status'), '4.4.1');
  assert.equal(one(down!, 'Remote-MTA'), undefined);
  assert.equal(one(down!, 'Diagnostic-Code'), 'X-Tern; connect to mx.example.com[198.51.100.7]:25: Connection refused');
  assert.match(flat(m.py.parts[0]!.text!), /<down@example\.com>: connect to mx\.example\.com\[198\.51\.100\.7\]:25: Connection refused/);
  assert.match(flat(m.py.parts[0]!.text!), /until the message expired/);
  assert.equal(m.py.parts[2]!.type, 'message/rfc822');
});

test('delay: Will-Retry-Until, warning text, headers only', async () => {
  const until = new Date('2026-03-07T08:00:00Z');
  const req = baseRequest({
    kind: ReportKind.REPORT_KIND_DELAYED,
    recipients: [
      {
        address: 'rcpt@example.net',
        orcpt: '',
        action: 'delayed',
        status: '4.2.2',
        remoteMta: 'mx1.example.net',
        diagnostic: { code: 452, enhanced: '4.2.2', text: 'Mailbox full' },
        lastAttemptAt: ATTEMPT,
        willRetryUntil: until,
        bounceClass: '',
      },
    ],
  });
  assert.equal(returnMode(req, { fullReturnLimit: 50_000 }), 'headers', 'RET=FULL applies to failures only');
  const m = await make(req);
  checkCommon(m, { subject: 'Delayed Mail (still being retried)' });
  const [r] = perRecipient(m);
  assert.equal(one(r!, 'Action'), 'delayed');
  assert.equal(one(r!, 'Status'), '4.2.2');
  assert.equal(one(r!, 'Will-Retry-Until'), 'Sat, 07 Mar 2026 08:00:00 +0000');
  assert.equal(one(r!, 'Diagnostic-Code'), 'smtp; 452 4.2.2 Mailbox full');
  const text = m.py.parts[0]!.text!;
  assert.match(text, /THIS IS A WARNING ONLY/);
  assert.match(text.replace(/\s+/g, ' '), /keeps trying until Sat, 07 Mar 2026 08:00:00 \+0000/);
  assert.match(text, /mailbox is full/);
  assert.equal(m.py.parts[2]!.type, 'text/rfc822-headers');
  assert.equal(m.py.parts[2]!.description, 'Undelivered Message Headers');
});

test('success (delivered) and relayed reports', async () => {
  const delivered = await make(
    baseRequest({
      kind: ReportKind.REPORT_KIND_DELIVERED,
      recipients: [{ address: 'rcpt@example.net', orcpt: 'rfc822;rcpt@example.net', action: 'delivered', status: '2.0.0', remoteMta: 'mx1.example.net', diagnostic: { code: 250, enhanced: '2.0.0', text: 'Ok: queued as 4Xyz' }, lastAttemptAt: ATTEMPT, willRetryUntil: undefined, bounceClass: '' }],
    }),
  );
  checkCommon(delivered, { subject: 'Successful Mail Delivery Report' });
  const [d] = perRecipient(delivered);
  assert.equal(one(d!, 'Action'), 'delivered');
  assert.equal(one(d!, 'Status'), '2.0.0');
  assert.equal(one(d!, 'Original-Recipient'), 'rfc822;rcpt@example.net');
  assert.equal(one(d!, 'Diagnostic-Code'), 'smtp; 250 2.0.0 Ok: queued as 4Xyz');
  assert.match(delivered.py.parts[0]!.text!, /was delivered to the recipients/);
  assert.doesNotMatch(delivered.py.parts[0]!.text!, /postmaster/);
  assert.equal(delivered.py.parts[2]!.type, 'text/rfc822-headers');
  assert.equal(delivered.py.parts[2]!.description, 'Message Headers');

  const relayed = await make(
    baseRequest({
      kind: ReportKind.REPORT_KIND_RELAYED,
      recipients: [{ address: 'rcpt@example.net', orcpt: '', action: 'relayed', status: '', remoteMta: 'legacy.example.net', diagnostic: { code: 250, enhanced: '', text: 'OK' }, lastAttemptAt: ATTEMPT, willRetryUntil: undefined, bounceClass: '' }],
    }),
  );
  checkCommon(relayed, { subject: 'Mail Delivery Status Report' });
  const [r] = perRecipient(relayed);
  assert.equal(one(r!, 'Action'), 'relayed');
  assert.equal(one(r!, 'Status'), '2.0.0', 'status derived when not given');
  assert.equal(one(r!, 'Remote-MTA'), 'dns; legacy.example.net');
  assert.equal(one(r!, 'Diagnostic-Code'), 'smtp; 250 OK');
  assert.match(flat(relayed.py.parts[0]!.text!), /does not send delivery reports/);
});

test('what is returned: RET=FULL, RET=HDRS, and the size threshold when RET is not given', async () => {
  const big = ORIGINAL + 'x'.repeat(70_000) + '\r\n';
  const env = baseRequest().envelope!;
  const cases: Array<{ ret: DsnRet; size: number; expect: ReturnMode }> = [
    { ret: DsnRet.DSN_RET_FULL, size: big.length, expect: 'full' },
    { ret: DsnRet.DSN_RET_HDRS, size: ORIGINAL.length, expect: 'headers' },
    { ret: DsnRet.DSN_RET_UNSPECIFIED, size: ORIGINAL.length, expect: 'full' },
    { ret: DsnRet.DSN_RET_UNSPECIFIED, size: big.length, expect: 'headers' },
  ];
  for (const c of cases) {
    const req = baseRequest({ size: c.size, envelope: { ...env, ret: c.ret } });
    assert.equal(returnMode(req, { fullReturnLimit: 50_000 }), c.expect, `RET ${c.ret} size ${c.size}`);
    const m = await make(req, { source: c.size === big.length ? big : ORIGINAL });
    const third = m.py.parts[2]!;
    if (c.expect === 'full') {
      assert.equal(third.type, 'message/rfc822');
      const att = m.mail.attachments.find((a) => a.contentType === 'message/rfc822')!;
      assert.equal(att.content.length, c.size, 'the whole original is returned');
    } else {
      assert.equal(third.type, 'text/rfc822-headers');
      assert.ok(m.raw.length < 4_000, 'headers only: the report stays small');
    }
  }
  // A binary message is never returned whole; the threshold is configurable.
  assert.equal(returnMode(baseRequest({ envelope: { ...env, bodyType: BodyType.BODY_TYPE_BINARYMIME } }), { fullReturnLimit: 50_000 }), 'headers');
  assert.equal(returnMode(baseRequest({ envelope: { ...env, ret: DsnRet.DSN_RET_UNSPECIFIED } }), { fullReturnLimit: 10 }), 'headers');
  // An 8BITMIME original is returned with an 8bit transfer encoding.
  const eight = ORIGINAL.replace('the numbers are attached.', 'die Zahlen sind angehängt.');
  const m8 = await make(baseRequest({ size: Buffer.byteLength(eight), envelope: { ...env, bodyType: BodyType.BODY_TYPE_8BITMIME } }), { source: eight });
  assert.equal(m8.report.eightBit, true);
  assert.equal(one(m8.py.headers, 'Content-Transfer-Encoding'), '8bit');
  assert.equal(m8.py.parts[2]!.cte, '8bit');
  assert.equal(m8.mail.attachments.find((a) => a.contentType === 'message/rfc822')!.content.toString('utf8'), eight);
});

test('SMTPUTF8: RFC 6533 global types, utf-8 address type, raw UTF-8 kept', async () => {
  const orig = ORIGINAL.replace('From: Sender <sender@example.org>', 'From: Jörg <jörg@bücher.example>').replace('To: rcpt@example.net', 'To: 用户@例子.广告');
  const req = baseRequest({
    size: Buffer.byteLength(orig),
    envelope: { ...baseRequest().envelope!, sender: 'jörg@bücher.example', smtputf8: true, bodyType: BodyType.BODY_TYPE_8BITMIME, envid: 'ümlaut-id' },
    recipients: [
      { address: '用户@例子.广告', orcpt: 'utf-8;用户@例子.广告', action: 'failed', status: '5.1.1', remoteMta: 'mx.例子.广告', diagnostic: { code: 550, enhanced: '5.1.1', text: 'Benutzer unbekannt: 用户' }, lastAttemptAt: ATTEMPT, willRetryUntil: undefined, bounceClass: '' },
      { address: 'ascii@example.net', orcpt: '', action: 'failed', status: '5.1.1', remoteMta: 'mx.example.net', diagnostic: { code: 550, enhanced: '5.1.1', text: 'No such user' }, lastAttemptAt: ATTEMPT, willRetryUntil: undefined, bounceClass: '' },
    ],
  });
  const m = await make(req, { source: orig });
  checkCommon(m, { subject: 'Undelivered Mail Returned to Sender', global: true, to: 'jörg@bücher.example' });
  assert.equal(m.report.global, true);
  assert.equal(m.report.eightBit, true);
  assert.ok(m.raw.includes(Buffer.from('\r\nTo: <jörg@bücher.example>\r\n')), 'raw UTF-8 in the To field (RFC 6532)');
  assert.equal(one(perMessage(m), 'Original-Envelope-Id'), '+C3+BCmlaut-id', 'non-ASCII ENVID goes back to xtext');
  const [u, a] = perRecipient(m);
  assert.equal(one(u!, 'Final-Recipient'), 'utf-8; 用户@例子.广告');
  assert.equal(one(u!, 'Original-Recipient'), 'utf-8;用户@例子.广告');
  assert.equal(one(u!, 'Diagnostic-Code'), 'smtp; 550 5.1.1 Benutzer unbekannt: 用户');
  assert.equal(one(a!, 'Final-Recipient'), 'rfc822; ascii@example.net');
  const third = m.py.parts[2]!;
  assert.equal(third.type, 'message/global');
  assert.equal(third.cte, '8bit');
  assert.equal(one(third.inner_headers!, 'To'), '用户@例子.广告');
  assert.equal(m.mail.attachments.find((x) => x.contentType === 'message/global')?.content.toString('utf8'), orig);
  assert.match(m.py.parts[0]!.text!, /<用户@例子\.广告>: host mx\.例子\.广告 said/);

  // Headers only: message/global-headers.
  const h = await make(req, { source: orig, mode: 'headers' });
  assert.equal(h.py.parts[2]!.type, 'message/global-headers');
  assert.equal(one(h.py.parts[2]!.inner_headers!, 'From'), 'Jörg <jörg@bücher.example>');
});

test('50 recipients in one report', async () => {
  const recipients = Array.from({ length: 50 }, (_, i) => ({
    address: `user${i}@example${i % 5}.net`,
    orcpt: i % 2 === 0 ? `rfc822;alias${i}@example.org` : '',
    action: 'failed',
    status: `5.1.${i % 10}`,
    remoteMta: `mx.example${i % 5}.net`,
    diagnostic: { code: 550, enhanced: `5.1.${i % 10}`, text: `user${i} unknown` },
    lastAttemptAt: new Date(ATTEMPT.getTime() + i * 1000),
    willRetryUntil: undefined,
    bounceClass: '',
  }));
  const m = await make(baseRequest({ recipients }));
  checkCommon(m, { subject: 'Undelivered Mail Returned to Sender' });
  const rs = perRecipient(m);
  assert.equal(rs.length, 50);
  rs.forEach((r, i) => {
    assert.equal(one(r, 'Final-Recipient'), `rfc822; user${i}@example${i % 5}.net`);
    assert.equal(one(r, 'Original-Recipient'), i % 2 === 0 ? `rfc822;alias${i}@example.org` : undefined);
    assert.equal(one(r, 'Status'), `5.1.${i % 10}`);
    assert.equal(one(r, 'Remote-MTA'), `dns; mx.example${i % 5}.net`);
    assert.equal(one(r, 'Diagnostic-Code'), `smtp; 550 5.1.${i % 10} user${i} unknown`);
    assert.equal(one(r, 'Last-Attempt-Date'), new Date(ATTEMPT.getTime() + i * 1000).toUTCString().replace('GMT', '+0000'));
  });
  const text = m.py.parts[0]!.text!;
  for (let i = 0; i < 50; i++) assert.ok(text.includes(`<user${i}@example${i % 5}.net>`), `user${i} is in the text`);
});

test('ENVID and ORCPT round trip through xtext', async () => {
  // As given on the wire (xtext), as the envelope stores them (decoded).
  const envidWire = 'QX+2B17+3D+2Bab';
  const orcptWire = 'rfc822;first+2Blast@example.org';
  const envid = xtextDecode(envidWire);
  const orcptAddr = xtextDecode(orcptWire.slice('rfc822;'.length));
  assert.equal(envid, 'QX+17=+ab');
  assert.equal(orcptAddr, 'first+last@example.org');
  const req = baseRequest({
    envelope: { ...baseRequest().envelope!, envid },
    recipients: [{ ...baseRequest().recipients[0]!, orcpt: `rfc822;${orcptAddr}` }, { ...baseRequest().recipients[0]!, address: 'ctl@example.net', orcpt: 'rfc822;bad\r\nInjected: yes' }],
  });
  const m = await make(req);
  const pm = perMessage(m);
  assert.equal(one(pm, 'Original-Envelope-Id'), envid);
  assert.equal(xtextEncode(one(pm, 'Original-Envelope-Id')!), envidWire, 'encodes back to what the client sent');
  const [r, ctl] = perRecipient(m);
  assert.equal(one(r!, 'Original-Recipient'), 'rfc822;first+last@example.org');
  assert.equal(`rfc822;${xtextEncode(one(r!, 'Original-Recipient')!.slice('rfc822;'.length))}`, orcptWire);
  // A decoded value that cannot stand in a field (CR LF) is written as xtext, never raw.
  assert.equal(one(ctl!, 'Original-Recipient'), 'rfc822;bad+0D+0AInjected:+20yes');
  assert.equal(all(ctl!, 'Injected').length, 0);
  assert.throws(() => xtextDecode('a+2'), /invalid xtext/);
  assert.throws(() => xtextDecode('a=b'), /invalid xtext/);
  assert.equal(xtextDecode(xtextEncode('ü +=\u0001')), 'ü +=\u0001');
});

test('a non-ASCII ORCPT as the ORCPT parameter to a next hop: xtext of UTF-8 bytes, RFC 6533 utf-8 forms', () => {
  // rfc822: every byte of the UTF-8 form escaped (never a UTF-16 code unit such as "+FC" or "+20AC").
  assert.equal(orcptParam('rfc822;j\u00fcrgen\u20ac@example.org', false), 'rfc822;j+C3+BCrgen+E2+82+AC@example.org');
  assert.equal(xtextDecode(orcptParam('rfc822;j\u00fcrgen\u20ac@example.org', true)!.slice('rfc822;'.length)), 'j\u00fcrgen\u20ac@example.org');
  // utf-8 (RFC 6533 3): utf-8-addr-xtext without SMTPUTF8, utf-8-addr-unitext with it; "+", "=" and "\\" always escaped.
  assert.equal(orcptParam('utf-8;j\u00fcrgen+x\u{1F600}@example.org', false), 'utf-8;j\\x{FC}rgen\\x{2B}x\\x{1F600}@example.org');
  assert.equal(orcptParam('utf-8;j\u00fcrgen+x\u{1F600}@example.org', true), 'utf-8;j\u00fcrgen\\x{2B}x\u{1F600}@example.org');
  assert.equal(orcptParam('no-type', false), undefined);
});

test('the original is streamed: the report starts before the source is read, and a large body never sits in memory', async () => {
  const chunk = Buffer.alloc(64 * 1024, 'a');
  let pulled = 0;
  const total = 400; // 25 MiB
  async function* source(): AsyncGenerator<Buffer> {
    pulled++;
    yield Buffer.from('Subject: big\r\nMessage-ID: <big@example.org>\r\n\r\n');
    for (let i = 0; i < total; i++) {
      pulled++;
      yield Buffer.concat([chunk.subarray(0, chunk.length - 2), Buffer.from('\r\n')]);
    }
  }
  const original = await openOriginal(source());
  assert.equal(pulled, 1, 'only the header section was read');
  assert.equal(original.messageId, '<big@example.org>');
  const report = buildReport(baseRequest({ size: total * chunk.length }), { reportingMta: 'mx.tern.test', original, ret: 'full', now: () => NOW });
  let bytes = 0;
  let first = true;
  let maxChunk = 0;
  for await (const c of report.stream()) {
    if (first) {
      assert.ok(pulled <= 2, `first report chunk after ${pulled} source chunks`);
      first = false;
    }
    bytes += c.length;
    maxChunk = Math.max(maxChunk, c.length);
  }
  assert.equal(pulled, total + 1);
  assert.ok(bytes > total * chunk.length);
  assert.ok(maxChunk <= 64 * 1024, 'chunks pass through, nothing is accumulated');
});

test('headers-only sources, oversized header sections, and an unavailable original', async () => {
  // What ReadBody(headers_only) gives: the header section only (with or without the blank line).
  for (const headersOnly of [ORIGINAL.slice(0, ORIGINAL.indexOf('\r\n\r\n') + 4), ORIGINAL.slice(0, ORIGINAL.indexOf('\r\n\r\n') + 2)]) {
    const m = await make(baseRequest(), { source: headersOnly, mode: 'headers' });
    assert.equal(m.py.parts[2]!.type, 'text/rfc822-headers');
    assert.equal(one(m.py.parts[2]!.inner_headers!, 'Subject'), 'Quarterly numbers');
    assert.equal(one(m.py.headers, 'In-Reply-To'), '<orig-123@example.org>');
  }
  // A header section beyond the bound is cut at a line end; the report stays well-formed.
  const huge = 'Subject: long\r\n' + Array.from({ length: 5000 }, (_, i) => `X-Filler-${i}: ${'y'.repeat(60)}`).join('\r\n') + '\r\n\r\nbody\r\n';
  const original = await openOriginal(pieces(huge, 4096), { maxHeaderBytes: 16 * 1024 });
  assert.equal(original.complete, false);
  assert.ok(original.header.length <= 16 * 1024);
  const raw = await reportToBuffer(buildReport(baseRequest(), { reportingMta: 'mx.tern.test', original, ret: 'headers', now: () => NOW }));
  const py = pyParse(raw);
  assert.deepEqual(py.defects, []);
  assert.equal(py.parts[2]!.type, 'text/rfc822-headers');
  assert.ok(py.parts[2]!.raw!.length <= 16 * 1024);
  assert.ok(py.parts[2]!.raw!.split('\n').filter(Boolean).every((l) => /^(Subject|X-Filler-\d+): /.test(l)), 'only whole header lines');

  const gone = await make(baseRequest(), { source: null });
  assert.equal(gone.report.returned, 'unavailable');
  assert.equal(gone.py.parts[2]!.type, 'text/plain');
  assert.match(gone.py.parts[2]!.text!, /no longer available/);
  assert.match(gone.py.parts[0]!.text!, /no longer available/);
  assert.equal(one(gone.py.headers, 'In-Reply-To'), undefined);
});

test('no report for the null sender or about a report; reports are never made twice over', async () => {
  const nullSender = baseRequest({ envelope: { ...baseRequest().envelope!, sender: '' } });
  assert.equal(whyNoReport(nullSender), 'null-sender');
  assert.throws(() => buildReport(nullSender, { reportingMta: 'mx.tern.test' }), (e: unknown) => e instanceof NoReportError && e.reason === 'null-sender');

  // A report from us (built here), sent on by a misbehaving relay with a real sender.
  const first = await reportToBuffer(buildReport(baseRequest(), { reportingMta: 'mx.tern.test', now: () => NOW }));
  const original = await openOriginal(pieces(first));
  assert.equal(original.isDeliveryReport, true);
  assert.equal(whyNoReport(baseRequest(), original), 'original-is-report');
  assert.throws(() => buildReport(baseRequest(), { reportingMta: 'mx.tern.test', original }), (e: unknown) => e instanceof NoReportError && e.reason === 'original-is-report');
  // A multipart/report of another type (an MDN) is ordinary mail.
  const mdn = await openOriginal(pieces('Content-Type: multipart/report; report-type=disposition-notification; boundary=x\r\n\r\n--x--\r\n'));
  assert.equal(mdn.isDeliveryReport, false);
  assert.equal(whyNoReport(baseRequest({ recipients: [] })), 'no-recipients');
});

test('who is owed a report (RFC 3461 NOTIFY), and never the null sender', () => {
  const N = DsnNotify;
  const s = 'sender@example.org';
  const table: Array<[DsnNotify[], string, boolean]> = [
    [[], 'failed', true],
    [[], 'delayed', false],
    [[], 'delivered', false],
    [[], 'relayed', false],
    [[N.DSN_NOTIFY_UNSPECIFIED], 'failed', true],
    [[N.DSN_NOTIFY_NEVER], 'failed', false],
    [[N.DSN_NOTIFY_NEVER], 'delayed', false],
    [[N.DSN_NOTIFY_NEVER, N.DSN_NOTIFY_FAILURE], 'failed', false],
    [[N.DSN_NOTIFY_FAILURE], 'failed', true],
    [[N.DSN_NOTIFY_FAILURE], 'delayed', false],
    [[N.DSN_NOTIFY_DELAY], 'delayed', true],
    [[N.DSN_NOTIFY_DELAY], 'failed', false],
    [[N.DSN_NOTIFY_SUCCESS], 'delivered', true],
    [[N.DSN_NOTIFY_SUCCESS], 'relayed', true],
    [[N.DSN_NOTIFY_SUCCESS], 'expanded', true],
    [[N.DSN_NOTIFY_SUCCESS], 'failed', false],
    [[N.DSN_NOTIFY_FAILURE, N.DSN_NOTIFY_DELAY], 'delivered', false],
    [[N.DSN_NOTIFY_FAILURE, N.DSN_NOTIFY_DELAY], 'relayed', false],
    [[N.DSN_NOTIFY_SUCCESS, N.DSN_NOTIFY_FAILURE, N.DSN_NOTIFY_DELAY], 'delayed', true],
  ];
  for (const [notify, action, owed] of table) {
    assert.equal(reportOwed(s, notify, action as 'failed'), owed, `NOTIFY=${notify.map((n) => N[n]).join(',') || '(none)'} ${action}`);
    assert.equal(reportOwed('', notify, action as 'failed'), false, 'null sender never');
  }
  assert.equal(reportOwed(s, [], ReportKind.REPORT_KIND_FAILED), true);
  assert.equal(reportOwed(s, [N.DSN_NOTIFY_DELAY], ReportKind.REPORT_KIND_DELAYED), true);
  const rs = [
    { id: 1, notify: [] },
    { id: 2, notify: [N.DSN_NOTIFY_NEVER] },
    { id: 3, notify: [N.DSN_NOTIFY_SUCCESS] },
    { id: 4, notify: [N.DSN_NOTIFY_FAILURE, N.DSN_NOTIFY_DELAY] },
  ];
  assert.deepEqual(recipientsOwedReport(s, 'failed', rs).map((r) => r.id), [1, 4]);
  assert.deepEqual(recipientsOwedReport(s, 'delayed', rs).map((r) => r.id), [4]);
  assert.deepEqual(recipientsOwedReport(s, 'delivered', rs).map((r) => r.id), [3]);
  assert.deepEqual(recipientsOwedReport('', 'failed', rs), []);
});

test('streams are read once; Readable sources work', async () => {
  const original = await openOriginal(Readable.from([Buffer.from(ORIGINAL)]));
  const report = buildReport(baseRequest(), { reportingMta: 'mx.tern.test', original, ret: 'full', now: () => NOW });
  const raw = await reportToBuffer(report);
  assert.ok(raw.includes(Buffer.from('the numbers are attached.')));
  await assert.rejects(() => reportToBuffer(report), /only once/);
});
