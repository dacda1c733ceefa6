// Differential conformance: the same raw SMTP dialogues played against a
// real Postfix smtpd and against Tern's ingress as deployed (policy, queue
// and ingress as processes on real Postgres and NATS), compared step by
// step: the reply code exactly, and the enhanced status code (class.subject.
// detail) wherever both give one. Both are set up alike: the same local
// domain and mailboxes (unknown users refused at RCPT), the same limits
// (message size, recipients per message, errors per session), relaying
// refused to an outside client (127.0.0.77; only 127.0.0.1 is trusted on
// both), STARTTLS offered, AUTH not offered on the MX port, HELO required,
// and Postfix's 3.9 protections on (no unauthorised pipelining, no bare LF).
//
// The corpus is data: one line per dialogue. A dialogue starts after the
// greeting with "EHLO client.test" (unless it says otherwise) and ends with
// an implicit QUIT, so a session the server closed shows as "closed" there.
// Where Tern deliberately answers otherwise, the row says what each side
// answers and why (RFC sections); those rows still check both sides.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { Harness, postfixAvailable, selfSignedCert, startPlatform, startPostfix, type Platform, type PostfixHandle } from '@tern/devkit';
import { DomainKind, PolicyServiceClient } from '@tern/proto';

const skip = postfixAvailable() ? false : 'postfix is not installed (scripts/system-deps.sh installs it)';
const harness = new Harness({ name: 'conformance-postfix-differential' });

const DOMAIN = 'local.test';
const MAILBOXES = ['alice@local.test', 'bob@local.test', 'carol@local.test', 'dave@local.test'];
const LIMITS = { size: 20_000, recipients: 3, errors: 20 };
/** Not in either side's trusted networks (127.0.0.1/32): an internet client. */
const OUTSIDE = '127.0.0.77';

let platform: Platform;
let postfix: PostfixHandle;

// ---------------------------------------------------------------- the corpus

/** One packet: `raw` written at once, then `n` replies read. */
interface Packet {
  raw: string | Buffer;
  n: number;
}
type Step = string | Packet;

/**
 * Tern and Postfix answer differently, on purpose: each side's whole
 * transcript (steps split by " | ", the replies of one packet by ", ";
 * "closed" where the server closed), and why Tern's is right.
 */
interface Differs {
  tern: string;
  postfix: string;
  why: string;
}

interface Dialogue {
  name: string;
  steps: Step[];
  /** What opens the session after the greeting; null = nothing. Default "EHLO client.test". */
  hello?: string | null;
  differs?: Differs;
}

/** Commands written in one packet (a pipelined group), one reply each. */
const pipe = (...lines: string[]): Packet => ({ raw: lines.map((l) => `${l}\r\n`).join(''), n: lines.length });
/** Bytes written as they are, `n` replies read. */
const raw = (bytes: string | Buffer, n = 1): Packet => ({ raw: bytes, n });
/** Message content after a 354, with the end of data. */
const body = (text: string): Packet => ({ raw: `${text}\r\n.\r\n`, n: 1 });
const MAIL = 'MAIL FROM:<sender@example.org>';
const RCPT = 'RCPT TO:<alice@local.test>';
const MSG = 'Subject: test\r\n\r\nhello';
const BIG = `Subject: big\r\n\r\n${`${'y'.repeat(98)}\r\n`.repeat(Math.ceil(LIMITS.size / 100) + 10)}`.replace(/\r\n$/, '');
const d = (name: string, steps: Step[], more: Omit<Dialogue, 'name' | 'steps'> = {}): Dialogue => ({ name, steps, ...more });
/** A dialogue answered differently on purpose: both transcripts and the reason. */
const x = (name: string, steps: Step[], tern: string, postfix: string, why: string, more: Omit<Dialogue, 'name' | 'steps' | 'differs'> = {}): Dialogue => ({
  name,
  steps,
  ...more,
  differs: { tern, postfix, why },
});

// Why Tern answers otherwise than Postfix (each an RFC or a deliberate, documented choice).
const WHY = {
  strictLines: 'RFC 5321 2.3.8/4.1.1: a command is CRLF-terminated ASCII starting with its verb; Tern refuses bare CR/LF (521, closing, as Postfix 3.9 smtpd_forbid_bare_newline does) and NUL; Postfix 3.7 lets NOOP ignore them',
  lineLimit: 'RFC 5321 4.5.3.1.4/4.5.3.1.10: command lines are at most 512 octets, "500 Line too long"; Postfix accepts up to line_length_limit (2048) and then splits',
  brackets: 'RFC 5321 4.1.2: Path = "<" Mailbox ">"; Postfix accepts a path without brackets (strict_rfc821_envelopes = no)',
  addressSyntax: 'RFC 5321 4.1.2: not a Mailbox (Local-part "@" Domain, LDH labels), so 501 5.1.3 at once; Postfix parses leniently and refuses later as relaying or unknown user',
  pathTooLong: 'RFC 5321 4.5.3.1.3/4.5.3.1.10: a path is at most 256 octets, "501 Path too long"',
  nullPostmasterSender: 'RFC 5321 4.1.1.2/4.5.1: only RCPT takes a bare <postmaster>; a reverse-path needs a domain (Postfix appends $myorigin)',
  utf8Address: 'RFC 6531 3.5: a non-ASCII address without SMTPUTF8 is refused with 553 5.6.7; Postfix autodetects (strict_smtputf8 = no)',
  paramSyntax: 'RFC 5321 4.1.1.11: 555 is for parameters not recognised; a known parameter with a malformed value is a syntax error, 501 (enhanced code 5.5.4 on both)',
  binarymime: 'Tern offers BINARYMIME (RFC 3030) in EHLO; Postfix does not',
  paramConflict: 'a parameter given twice with different values is ambiguous: refused 501 5.5.4; Postfix takes the last',
  authParam: 'RFC 5321 4.1.1.11/RFC 4954 5: AUTH is not offered on the MX port, so AUTH= is an unsupported parameter (555); Postfix ignores it',
  addressLiteral: 'Tern serves only its configured domains; an address literal (in Kubernetes a pod address) is relaying, 554 5.7.1; Postfix takes its own interface addresses as local',
  vrfy: 'RFC 5321 3.5.3/7.3: VRFY off (TERN_VRFY unset) answers 252, not 502 (Postfix disable_vrfy_command)',
  notImplemented: 'RFC 5321 4.2.4: a command recognised but not offered is 502 5.5.1; Postfix does not know EXPN/HELP/TURN (500 5.5.2) and offers ETRN (459 without an enhanced code)',
  starttlsInTransaction: 'STARTTLS inside a transaction is a bad sequence (503 5.5.1) rather than silently dropping the transaction (RFC 3207 4.2); Postfix starts TLS',
};

const CORPUS: Dialogue[] = [
  // Command syntax
  d('unknown command', ['FROBNICATE']),
  d('unknown command with arguments', ['FROBNICATE a b c']),
  d('empty command line', ['']),
  x('command line with a leading space', [' NOOP'], '500 5.5.2 | 221 2.0.0', '250 2.0.0 | 221 2.0.0', WHY.strictLines),
  d('lowercase verbs', ['mail from:<sender@example.org>', 'rcpt to:<alice@local.test>', 'rset', 'noop', 'quit']),
  d('mixed-case verbs and keywords', ['Mail From:<sender@example.org>', 'Rcpt To:<alice@local.test>', 'Data', body(MSG)]),
  d('MAIL without arguments', ['MAIL']),
  d('MAIL FROM: without a path', ['MAIL FROM:']),
  d('MAIL FROM: followed by spaces only', ['MAIL FROM:   ']),
  d('MAIL with a misspelled keyword', ['MAIL FORM:<sender@example.org>']),
  d('RCPT without arguments', [MAIL, 'RCPT']),
  d('RCPT TO: without a path', [MAIL, 'RCPT TO:']),
  d('EHLO without a name', ['EHLO'], { hello: null }),
  d('HELO without a name', ['HELO'], { hello: null }),
  d('DATA with an argument', [MAIL, RCPT, 'DATA now']),
  x('bare LF ends a command', [raw('NOOP\n')], '521 5.5.2 | closed', '250 2.0.0 | 221 2.0.0', WHY.strictLines),
  x('bare CR inside a command', [raw('NOOP a\rb\r\n')], '521 5.5.2 | closed', '250 2.0.0 | 221 2.0.0', WHY.strictLines),
  x('NUL inside a command', [raw('NOOP a\x00b\r\n')], '500 5.5.2 | 221 2.0.0', '250 2.0.0 | 221 2.0.0', WHY.strictLines),
  d('NUL before the verb', [raw('\x00NOOP\r\n')]),
  d('8-bit octets (not UTF-8) in a command', [raw(Buffer.from('NOOP caf\xe9\r\n', 'latin1'))]),
  d('8-bit octets (not UTF-8) in MAIL', [raw(Buffer.from('MAIL FROM:<caf\xe9@example.org>\r\n', 'latin1'))]),
  x('UTF-8 sender without SMTPUTF8', ['MAIL FROM:<jösé@example.org>'], '553 5.6.7 | 221 2.0.0', '250 2.1.0 | 221 2.0.0', WHY.utf8Address),
  x('command line of 600 octets', [`NOOP ${'x'.repeat(594)}`], '500 5.5.2 | 221 2.0.0', '250 2.0.0 | 221 2.0.0', WHY.lineLimit),
  x('command line of 3000 octets', [`NOOP ${'x'.repeat(2994)}`], '500 5.5.2 | 221 2.0.0', '250 2.0.0 | 221 2.0.0', WHY.lineLimit),

  // Sequence
  d('MAIL before HELO/EHLO', [MAIL], { hello: null }),
  d('RCPT before MAIL', [RCPT]),
  d('DATA before MAIL', ['DATA']),
  d('DATA before RCPT', [MAIL, 'DATA']),
  d('DATA when every recipient was refused', [MAIL, 'RCPT TO:<nobody@local.test>', 'DATA']),
  d('nested MAIL', [MAIL, MAIL]),
  d('RCPT after RSET', [MAIL, 'RSET', RCPT]),
  d('RCPT after a second EHLO', [MAIL, 'EHLO client.test', RCPT]),
  d('BDAT before MAIL', [raw('BDAT 5\r\nhello')]),
  d('BDAT before RCPT', [MAIL, raw('BDAT 5\r\nhello')]),
  d('DATA after BDAT', [MAIL, RCPT, raw('BDAT 5\r\nhello'), 'DATA']),
  d('BDAT with a bad size', [MAIL, RCPT, 'BDAT five']),
  d('BDAT in two chunks', [MAIL, RCPT, raw('BDAT 17\r\nSubject: chunks\r\n'), raw('BDAT 9 LAST\r\n\r\nhello\r\n')]),
  d('HELO then a full transaction', [MAIL, RCPT, 'DATA', body(MSG)], { hello: 'HELO client.test' }),

  // Addresses
  x('MAIL without angle brackets', ['MAIL FROM:sender@example.org'], '501 5.1.7 | 221 2.0.0', '250 2.1.0 | 221 2.0.0', WHY.brackets),
  x('RCPT without angle brackets', [MAIL, 'RCPT TO:alice@local.test'], '250 2.1.0 | 501 5.1.3 | 221 2.0.0', '250 2.1.0 | 250 2.1.5 | 221 2.0.0', WHY.brackets),
  d('MAIL with an unclosed bracket', ['MAIL FROM:<sender@example.org']),
  x('RCPT with an unopened bracket', [MAIL, 'RCPT TO:alice@local.test>'], '250 2.1.0 | 501 5.1.3 | 221 2.0.0', '250 2.1.0 | 250 2.1.5 | 221 2.0.0', WHY.brackets),
  d('RCPT with a source route', [MAIL, 'RCPT TO:<@relay.example.org:alice@local.test>']),
  d('RCPT with a quoted local part', [MAIL, 'RCPT TO:<"alice"@local.test>']),
  d('RCPT with a quoted local part holding a space', [MAIL, 'RCPT TO:<"al ice"@local.test>']),
  x('RCPT to an IPv4 literal', [MAIL, 'RCPT TO:<alice@[127.0.0.1]>'], '250 2.1.0 | 554 5.7.1 | 221 2.0.0', '250 2.1.0 | 550 5.1.1 | 221 2.0.0', WHY.addressLiteral),
  d('RCPT to a bad IPv4 literal', [MAIL, 'RCPT TO:<alice@[999.1.1.1]>']),
  d('MAIL from an IPv6 literal', ['MAIL FROM:<sender@[IPv6:2001:db8::1]>']),
  d('RCPT to a domain starting with a hyphen', [MAIL, 'RCPT TO:<alice@-bad.test>']),
  x('RCPT to a domain with an underscore', [MAIL, 'RCPT TO:<alice@bad_domain.test>'], '250 2.1.0 | 501 5.1.3 | 221 2.0.0', '250 2.1.0 | 554 5.7.1 | 221 2.0.0', WHY.addressSyntax),
  d('RCPT to a domain with an empty label', [MAIL, 'RCPT TO:<alice@local..test>']),
  d('RCPT without a domain after @', [MAIL, 'RCPT TO:<alice@>']),
  x('RCPT without a local part', [MAIL, 'RCPT TO:<@local.test>'], '250 2.1.0 | 501 5.1.3 | 221 2.0.0', '250 2.1.0 | 550 5.1.1 | 221 2.0.0', WHY.addressSyntax),
  x('RCPT with two @', [MAIL, 'RCPT TO:<alice@other.test@local.test>'], '250 2.1.0 | 501 5.1.3 | 221 2.0.0', '250 2.1.0 | 554 5.7.1 | 221 2.0.0', WHY.addressSyntax),
  d('RCPT with a percent hack', [MAIL, 'RCPT TO:<alice%other.test@local.test>']),
  d('RCPT with a bang path', [MAIL, 'RCPT TO:<other.test!alice@local.test>']),
  d('RCPT with a 65-octet local part', [MAIL, `RCPT TO:<${'a'.repeat(65)}@local.test>`]),
  x('RCPT with a 300-octet address', [MAIL, `RCPT TO:<${'a'.repeat(289)}@local.test>`], '250 2.1.0 | 501 5.1.3 | 221 2.0.0', '250 2.1.0 | 550 5.1.1 | 221 2.0.0', WHY.pathTooLong),
  d('MAIL with a 64-octet domain label', [`MAIL FROM:<sender@${'d'.repeat(64)}.example.org>`]),
  d('null sender and a recipient', ['MAIL FROM:<>', RCPT]),
  d('null recipient', [MAIL, 'RCPT TO:<>']),
  d('postmaster without a domain', [MAIL, 'RCPT TO:<postmaster>', 'RCPT TO:<PostMaster>']),
  x('MAIL from postmaster without a domain', ['MAIL FROM:<postmaster>'], '501 5.1.7 | 221 2.0.0', '250 2.1.0 | 221 2.0.0', WHY.nullPostmasterSender),
  d('MAIL with a space after the colon', ['MAIL FROM: <sender@example.org>']),
  d('MAIL with two spaces before a parameter', ['MAIL FROM:<sender@example.org>  SIZE=100']),

  // Parameters
  d('unknown MAIL parameter', ['MAIL FROM:<sender@example.org> FROBNICATE=1']),
  d('unknown RCPT parameter', [MAIL, 'RCPT TO:<alice@local.test> FROBNICATE=1']),
  d('SIZE over the limit', [`MAIL FROM:<sender@example.org> SIZE=${LIMITS.size + 1}`]),
  d('SIZE within the limit', [`MAIL FROM:<sender@example.org> SIZE=${LIMITS.size}`]),
  d('SIZE not a number', ['MAIL FROM:<sender@example.org> SIZE=big']),
  x('SIZE without a value', ['MAIL FROM:<sender@example.org> SIZE'], '501 5.5.4 | 221 2.0.0', '555 5.5.4 | 221 2.0.0', WHY.paramSyntax),
  d('BODY=8BITMIME', ['MAIL FROM:<sender@example.org> BODY=8BITMIME', RCPT, 'DATA', body('Subject: 8bit\r\n\r\ncafé')]),
  d('BODY=7BIT', ['MAIL FROM:<sender@example.org> BODY=7BIT']),
  x('BODY=BINARYMIME', ['MAIL FROM:<sender@example.org> BODY=BINARYMIME'], '250 2.1.0 | 221 2.0.0', '555 5.5.4 | 221 2.0.0', WHY.binarymime),
  x('BODY with an unknown value', ['MAIL FROM:<sender@example.org> BODY=9BIT'], '501 5.5.4 | 221 2.0.0', '555 5.5.4 | 221 2.0.0', WHY.paramSyntax),
  d('SMTPUTF8 and a UTF-8 sender', ['MAIL FROM:<jösé@example.org> SMTPUTF8', RCPT]),
  x('SMTPUTF8 with a value', ['MAIL FROM:<sender@example.org> SMTPUTF8=yes'], '501 5.5.4 | 221 2.0.0', '555 5.5.4 | 221 2.0.0', WHY.paramSyntax),
  d('NOTIFY=NEVER with SUCCESS', [MAIL, 'RCPT TO:<alice@local.test> NOTIFY=NEVER,SUCCESS']),
  d('NOTIFY with an unknown keyword', [MAIL, 'RCPT TO:<alice@local.test> NOTIFY=SOMETIMES']),
  d('NOTIFY and ORCPT well formed', [MAIL, 'RCPT TO:<alice@local.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;alice@local.test']),
  d('ORCPT without an address type', [MAIL, 'RCPT TO:<alice@local.test> ORCPT=alice@local.test']),
  d('ORCPT with bad xtext', [MAIL, 'RCPT TO:<alice@local.test> ORCPT=rfc822;alice+zz@local.test']),
  d('RET with an unknown value', ['MAIL FROM:<sender@example.org> RET=ALL']),
  d('ENVID with bad xtext', ['MAIL FROM:<sender@example.org> ENVID=abc+zz']),
  d('RET and ENVID well formed', ['MAIL FROM:<sender@example.org> RET=HDRS ENVID=abc+2Bdef']),
  d('SIZE given twice, alike', ['MAIL FROM:<sender@example.org> SIZE=100 SIZE=100']),
  x('SIZE given twice, differing', ['MAIL FROM:<sender@example.org> SIZE=100 SIZE=200'], '501 5.5.4 | 221 2.0.0', '250 2.1.0 | 221 2.0.0', WHY.paramConflict),
  d('NOTIFY given twice', [MAIL, 'RCPT TO:<alice@local.test> NOTIFY=FAILURE NOTIFY=DELAY']),
  x('AUTH parameter on MAIL, AUTH not offered', ['MAIL FROM:<sender@example.org> AUTH=<>'], '555 5.5.4 | 221 2.0.0', '250 2.1.0 | 221 2.0.0', WHY.authParam),

  // Policy and limits
  d('relaying refused to an outside client', [MAIL, 'RCPT TO:<someone@elsewhere.example>']),
  d('unknown local user', [MAIL, 'RCPT TO:<nobody@local.test>']),
  d('recipient in other case', [MAIL, 'RCPT TO:<ALICE@LOCAL.TEST>']),
  d('too many recipients', [MAIL, 'RCPT TO:<alice@local.test>', 'RCPT TO:<bob@local.test>', 'RCPT TO:<carol@local.test>', 'RCPT TO:<dave@local.test>']),
  d('message too large at the end of data', [MAIL, RCPT, 'DATA', body(BIG), 'NOOP']),
  d('a message accepted', [MAIL, RCPT, 'DATA', body(MSG)]),
  d('two messages in one session', [MAIL, RCPT, 'DATA', body(MSG), MAIL, 'RCPT TO:<bob@local.test>', 'DATA', body(MSG)]),

  // RSET, NOOP, VRFY, EXPN, HELP, QUIT, ETRN
  d('RSET', ['RSET']),
  d('RSET with an argument', ['RSET now']),
  d('NOOP with an argument', ['NOOP anything at all']),
  x('VRFY a mailbox', ['VRFY alice@local.test'], '252 2.5.0 | 221 2.0.0', '502 5.5.1 | 221 2.0.0', WHY.vrfy),
  x('VRFY without an argument', ['VRFY'], '501 5.5.4 | 221 2.0.0', '502 5.5.1 | 221 2.0.0', WHY.vrfy),
  x('EXPN a mailbox', ['EXPN alice@local.test'], '502 5.5.1 | 221 2.0.0', '500 5.5.2 | 221 2.0.0', WHY.notImplemented),
  x('EXPN without an argument', ['EXPN'], '502 5.5.1 | 221 2.0.0', '500 5.5.2 | 221 2.0.0', WHY.notImplemented),
  x('HELP', ['HELP'], '214 2.0.0 | 221 2.0.0', '500 5.5.2 | 221 2.0.0', WHY.notImplemented),
  x('HELP with an argument', ['HELP MAIL'], '214 2.0.0 | 221 2.0.0', '500 5.5.2 | 221 2.0.0', WHY.notImplemented),
  d('QUIT with an argument', ['QUIT now']),
  x('ETRN', ['ETRN local.test'], '502 5.5.1 | 221 2.0.0', '459 | 221 2.0.0', WHY.notImplemented),
  x('obsolete TURN', ['TURN'], '502 5.5.1 | 221 2.0.0', '500 5.5.2 | 221 2.0.0', WHY.notImplemented),

  // Pipelining
  d('a pipelined transaction', [pipe(MAIL, RCPT, 'RCPT TO:<bob@local.test>', 'DATA'), body(MSG)]),
  d('a pipelined group with a refused recipient', [pipe(MAIL, 'RCPT TO:<nobody@local.test>', RCPT, 'DATA'), body(MSG)]),
  // RFC 2920 3.1: DATA ends a group; text sent before the 354 would be read as commands if DATA failed.
  d('message text in the packet of DATA', [raw(`${MAIL}\r\n${RCPT}\r\nDATA\r\n${MSG}\r\n.\r\n`, 4)]),
  d('message text in the packet of DATA, every recipient refused', [raw(`${MAIL}\r\nRCPT TO:<nobody@local.test>\r\nDATA\r\nRCPT TO:<bob@local.test>\r\n`, 4)]),
  d('commands after the end of data in the same packet', [MAIL, RCPT, 'DATA', raw(`${MSG}\r\n.\r\nRSET\r\nNOOP\r\n`, 3)]),
  d('pipelining after HELO', [pipe(MAIL, RCPT)], { hello: 'HELO client.test' }),
  d('commands pipelined behind EHLO', [pipe('EHLO client.test', MAIL)], { hello: null }),

  // STARTTLS and AUTH
  d('STARTTLS with an argument', ['STARTTLS now']),
  x('STARTTLS inside a transaction', [MAIL, 'STARTTLS'], '250 2.1.0 | 503 5.5.1 | 221 2.0.0', '250 2.1.0 | 220 2.0.0 | closed', WHY.starttlsInTransaction),
  d('AUTH when not offered', ['AUTH PLAIN AGFsaWNlAHNlY3JldA==']),
  d('AUTH without a mechanism, not offered', ['AUTH']),
];

// ---------------------------------------------------------------- a raw client

/** "250 2.1.0", "354", or "closed" when the server closed before replying. */
interface Answer {
  code: number | null;
  enhanced?: string;
  text: string;
}

class Client {
  private buf = '';
  private closed = false;
  private wake: (() => void) | undefined;

  private constructor(private readonly sock: net.Socket) {
    sock.setEncoding('latin1');
    sock.on('data', (s: string) => {
      this.buf += s;
      this.wake?.();
    });
    sock.on('close', () => {
      this.closed = true;
      this.wake?.();
    });
    sock.on('error', () => {});
  }

  static connect(host: string, port: number): Promise<Client> {
    return new Promise((resolve, reject) => {
      const sock = net.connect({ host, port, localAddress: OUTSIDE }, () => resolve(new Client(sock)));
      sock.once('error', reject);
    });
  }

  send(data: string | Buffer): void {
    if (!this.closed) this.sock.write(typeof data === 'string' ? Buffer.from(data, 'utf8') : data);
  }

  /** One reply (the last line carries the code and enhanced code), or "closed". */
  async read(timeoutMs = 15_000): Promise<Answer> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const m = /^(?:\d{3}-[^\r\n]*\r\n)*(\d{3})(?: ([^\r\n]*))?\r\n/.exec(this.buf);
      if (m) {
        this.buf = this.buf.slice(m[0].length);
        const text = m[2] ?? '';
        const e = /^([245]\.\d{1,3}\.\d{1,3})(?: |$)/.exec(text);
        return { code: Number(m[1]), ...(e ? { enhanced: e[1] } : {}), text: m[0].trim() };
      }
      if (this.closed) return { code: null, text: 'closed' };
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no reply within ${timeoutMs} ms; have ${JSON.stringify(this.buf)}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.wake = () => {
          clearTimeout(t);
          this.wake = undefined;
          resolve();
        };
      });
    }
  }

  close(): void {
    this.sock.destroy();
  }
}

const show = (a: Answer): string => (a.code === null ? 'closed' : `${a.code}${a.enhanced ? ` ${a.enhanced}` : ''}`);

/** Plays a dialogue; one list of answers per step (the implicit QUIT last). */
async function play(host: string, port: number, dlg: Dialogue): Promise<Answer[][]> {
  const c = await Client.connect(host, port);
  try {
    const greeting = await c.read();
    assert.equal(greeting.code, 220, `greeting from ${host}:${port}: ${greeting.text}`);
    const hello = dlg.hello === undefined ? 'EHLO client.test' : dlg.hello;
    if (hello !== null) {
      c.send(`${hello}\r\n`);
      const r = await c.read();
      assert.equal(r.code, 250, `${hello} at ${host}:${port}: ${r.text}`);
    }
    const out: Answer[][] = [];
    for (const step of [...dlg.steps, 'QUIT']) {
      const p = typeof step === 'string' ? { raw: `${step}\r\n`, n: 1 } : step;
      c.send(p.raw);
      const answers: Answer[] = [];
      for (let i = 0; i < p.n; i++) {
        const a = await c.read();
        answers.push(a);
        if (a.code === null) break;
      }
      out.push(answers);
    }
    return out;
  } finally {
    c.close();
  }
}

/** The same reply code; the same enhanced code where both gave one. */
function same(a: Answer, b: Answer): boolean {
  if (a.code !== b.code) return false;
  return a.enhanced === undefined || b.enhanced === undefined || a.enhanced === b.enhanced;
}

const texts = (t: Answer[][]): string => t.map((step) => step.map((a) => a.text).join(' / ')).join(' | ');
const stepName = (s: Step | undefined): string => (s === undefined ? 'QUIT (implicit)' : JSON.stringify(typeof s === 'string' ? s : String(s.raw).slice(0, 60)));

// ---------------------------------------------------------------- setup

before(async () => {
  if (skip) return;
  const database = await harness.createTestDatabase();
  await harness.runMigrate(database.url, { entry: 'libs/db/dist/migrate.js' });
  const nats = await harness.startNats();
  const dns = await harness.startDns({ host: '127.0.0.1' });
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-differential-'));
  harness.defer(() => fs.rmSync(dir, { recursive: true, force: true }), 'remove certificate');
  const cert = selfSignedCert({ names: ['mx.tern.test', '127.0.0.1'] });
  fs.writeFileSync(path.join(dir, 'tls.crt'), cert.cert);
  fs.writeFileSync(path.join(dir, 'tls.key'), cert.key, { mode: 0o600 });

  const pfHost = '127.0.0.78';
  postfix = await startPostfix({
    host: pfHost,
    port: await harness.freePort(pfHost),
    hostname: 'mx.postfix.test',
    mailboxes: MAILBOXES,
    starttls: true,
    mainCf: [
      `message_size_limit = ${LIMITS.size}`,
      `smtpd_recipient_limit = ${LIMITS.recipients}`,
      `smtpd_hard_error_limit = ${LIMITS.errors}`,
      // The session is not slowed down after errors (Tern does not tarpit).
      'smtpd_error_sleep_time = 0',
      'smtpd_helo_required = yes',
      // Postfix 3.9's defaults: no pipelining before EHLO, no bare LF.
      'smtpd_forbid_unauth_pipelining = yes',
      'smtpd_forbid_bare_newline = yes',
      // Its own name is a local domain, so that <postmaster> resolves to a local address.
      'mydestination = $myhostname',
      // Tern's VRFY is off unless TERN_VRFY is set.
      'disable_vrfy_command = yes',
      // No DNS lookups for the client's name (nothing leaves the machine).
      'smtpd_peername_lookup = no',
    ],
  });
  harness.defer(() => postfix.stop(), 'stop postfix');

  platform = await startPlatform(harness, {
    databaseUrl: database.url,
    natsUrl: nats.url,
    dnsServer: dns.address,
    remoteSmtpPort: 25,
    hostname: 'mx.tern.test',
    only: ['policy', 'queue', 'ingress'],
    env: {
      ingress: {
        TERN_MAX_MESSAGE_SIZE: String(LIMITS.size),
        TERN_MAX_RECIPIENTS: String(LIMITS.recipients),
        TERN_MAX_ERRORS: String(LIMITS.errors),
        TERN_TLS_CERT_FILE: path.join(dir, 'tls.crt'),
        TERN_TLS_KEY_FILE: path.join(dir, 'tls.key'),
      },
    },
  });

  // The local domain and its mailboxes, through policy's API (what `tern domain add` and `tern mailbox add` call).
  const policy = new PolicyServiceClient(platform.policyAddr, grpc.credentials.createInsecure());
  try {
    const call = <Req, Res>(fn: (req: Req, cb: (err: grpc.ServiceError | null, res: Res) => void) => unknown, req: Req) =>
      new Promise<Res>((resolve, reject) => fn.call(policy, req, (err, res) => (err ? reject(err) : resolve(res))));
    await call(policy.putDomain, { domain: { name: DOMAIN, kind: DomainKind.DOMAIN_KIND_LOCAL, catchAll: '', maxMessageSize: 0, recipientCheck: 0 }, operator: 'differential-test' });
    for (const address of MAILBOXES) await call(policy.putMailbox, { mailbox: { address, enabled: true }, operator: 'differential-test' });
  } finally {
    policy.close();
  }
  // Ingress sees the data once a recipient is accepted from outside.
  const deadline = Date.now() + 30_000;
  for (;;) {
    const [, rcpt] = await play(platform.smtpHost, platform.smtpPort, d('ready', [MAIL, 'RCPT TO:<dave@local.test>']));
    if (rcpt?.[0]?.code === 250) break;
    if (Date.now() > deadline) throw new Error(`the local domain did not reach ingress: RCPT got ${show(rcpt![0]!)}`);
    await new Promise((r) => setTimeout(r, 200));
  }
});

after(() => harness.close());

// ---------------------------------------------------------------- the comparison

const differences: string[] = [];

for (const dlg of CORPUS) {
  test(`differential: ${dlg.name}`, { skip }, async () => {
    const tern = await play(platform.smtpHost, platform.smtpPort, dlg);
    const pf = await play(postfix.host, postfix.port, dlg);
    const problems: string[] = [];
    const transcript = (t: Answer[][]) => t.map((step) => step.map(show).join(', ')).join(' | ');
    if (dlg.differs) {
      differences.push(`${dlg.name} | tern ${transcript(tern)} | postfix ${transcript(pf)} | expected: ${dlg.differs.why}`);
      if (transcript(tern) !== dlg.differs.tern) problems.push(`Tern answered ${transcript(tern)}, the corpus expects ${dlg.differs.tern}: ${texts(tern)}`);
      if (transcript(pf) !== dlg.differs.postfix) problems.push(`Postfix answered ${transcript(pf)}, the corpus expects ${dlg.differs.postfix}: ${texts(pf)}`);
    }
    for (let i = 0; !dlg.differs && i < Math.max(tern.length, pf.length); i++) {
      const t = tern[i] ?? [];
      const p = pf[i] ?? [];
      if (t.length === p.length && t.every((a, k) => same(a, p[k]!))) continue;
      differences.push(`${dlg.name} | step ${i} ${stepName(dlg.steps[i])} | tern ${t.map(show).join(', ')} | postfix ${p.map(show).join(', ')}`);
      problems.push(`step ${i} ${stepName(dlg.steps[i])}: Tern ${t.map((a) => a.text).join(' / ')} | Postfix ${p.map((a) => a.text).join(' / ')}`);
    }
    assert.deepEqual(problems, [], problems.join('\n'));
  });
}

after(() => {
  if (differences.length && process.env.TERN_DIFFERENTIAL_REPORT) {
    process.stdout.write(`# differences (${differences.length})\n${differences.map((l) => `# ${l}`).join('\n')}\n`);
  }
});
