// deliver() (services/delivery/src/worker.ts) against a test DNS server and
// SMTP sinks on 127.0.4.x: next-hop rules, outcomes at every stage, SMTP
// extensions, connection reuse. Every MX host listens on the same port (the
// one delivery dials), on its own loopback address.
import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, test } from 'node:test';
import { Harness, type DnsServer, type SmtpSink } from '@tern/devkit';
import { AttemptOutcome, DsnNotify, DsnRet, BodyType, type DeliveryResult } from '@tern/proto';
import { ConnectionPool, PoolClosedError } from '../src/pool';
import { BodyUnavailableError, deliver } from '../src/worker';
import { shuffleEqualPreferences } from '../src/nexthop';
import { makeDeps, makeJob, MiniSmtp, plainHandler, type DepsOptions } from './helpers';

const { DELIVERED, DEFERRED, FAILED } = {
  DELIVERED: AttemptOutcome.ATTEMPT_OUTCOME_DELIVERED,
  DEFERRED: AttemptOutcome.ATTEMPT_OUTCOME_DEFERRED,
  FAILED: AttemptOutcome.ATTEMPT_OUTCOME_FAILED,
};

const harness = new Harness({ name: 'delivery-worker' });
const bodies = new Map<string, Buffer>();
let dns: DnsServer;
let port: number;
let sinkA: SmtpSink; // 127.0.4.2
let sinkB: SmtpSink; // 127.0.4.3
const REFUSED = '127.0.4.9'; // nothing listens there
const extra: MiniSmtp[] = [];

async function mini(host: string, handler: ConstructorParameters<typeof MiniSmtp>[1], o: ConstructorParameters<typeof MiniSmtp>[2] = {}): Promise<MiniSmtp> {
  const m = await new MiniSmtp(host, handler, o).start(port);
  extra.push(m);
  return m;
}

before(async () => {
  dns = await harness.startDns({ host: '127.0.4.1' });
  port = await harness.freePort('127.0.4.2');
  sinkA = await harness.startSink({ host: '127.0.4.2', port, hostname: 'a.sink.test' });
  sinkB = await harness.startSink({ host: '127.0.4.3', port, hostname: 'b.sink.test' });
});
after(async () => {
  for (const m of extra) await m.close();
  await harness.close();
});
beforeEach(() => {
  sinkA.reset().setBehaviour({});
  sinkB.reset().setBehaviour({});
});

function deps(o: Partial<DepsOptions> = {}) {
  return makeDeps({ dns: dns.address, port, bodies, ...o });
}

/** Two MX hosts: mx1 (preference 10) -> a, mx2 (20) -> b. */
function twoMx(domain: string, a: string, b: string): void {
  dns.mx(domain, `mx2.${domain}`, 20).mx(domain, `mx1.${domain}`, 10).a(`mx1.${domain}`, a).a(`mx2.${domain}`, b);
}

function replies(r: DeliveryResult | undefined): string[] {
  assert.ok(r, 'a result');
  return r.recipients.map((x) => `${x.reply?.code} ${x.reply?.enhanced}`);
}

describe('next hop', () => {
  test('MX hosts are tried by preference: the most preferred gets the message', async () => {
    twoMx('order.test', '127.0.4.2', '127.0.4.3');
    const r = await deliver(deps(), makeJob(bodies, ['u@order.test']));
    assert.deepEqual(replies(r), ['250 2.0.0']);
    assert.equal(r!.recipients[0]!.outcome, DELIVERED);
    assert.equal(r!.remoteHost, 'mx1.order.test');
    assert.equal(r!.remoteIp, '127.0.4.2');
    assert.equal(sinkA.messages.length, 1);
    assert.equal(sinkB.connectionCount, 0);
  });

  test('equal preferences are shuffled, lower preference always first', () => {
    const records = [
      { priority: 20, exchange: 'c' },
      { priority: 10, exchange: 'a' },
      { priority: 10, exchange: 'b' },
    ];
    const firsts = new Set<string>();
    for (let i = 0; i < 200; i++) {
      const s = shuffleEqualPreferences(records);
      assert.equal(s[2]!.exchange, 'c');
      firsts.add(s[0]!.exchange);
    }
    assert.deepEqual([...firsts].sort(), ['a', 'b']);
  });

  test('connection refused at the first MX: the next MX gets the message', async () => {
    twoMx('refused.test', REFUSED, '127.0.4.3');
    const r = await deliver(deps(), makeJob(bodies, ['u@refused.test']));
    assert.deepEqual(replies(r), ['250 2.0.0']);
    assert.equal(r!.remoteIp, '127.0.4.3');
    assert.equal(sinkB.messages.length, 1);
  });

  test('every MX refuses the connection: deferred 4.4.1 as a destination failure', async () => {
    dns.mx('down.test', 'mx1.down.test').a('mx1.down.test', REFUSED);
    const r = await deliver(deps(), makeJob(bodies, ['u@down.test', 'v@down.test']));
    assert.deepEqual(replies(r), ['451 4.4.1', '451 4.4.1']);
    assert.equal(r!.recipients[0]!.outcome, DEFERRED);
    assert.equal(r!.destinationFailure, true);
    assert.match(r!.recipients[0]!.reply!.text, /Connection refused/);
  });

  test('a 4xx greeting at the first MX: the next MX gets the message', async () => {
    twoMx('greet4.test', '127.0.4.2', '127.0.4.3');
    sinkA.setBehaviour({ greeting: { code: 421, text: '4.3.2 too busy' } });
    const r = await deliver(deps(), makeJob(bodies, ['u@greet4.test']));
    assert.deepEqual(replies(r), ['250 2.0.0']);
    assert.equal(sinkA.connectionCount, 1);
    assert.equal(sinkB.messages.length, 1);
  });

  test('a TLS failure at the first MX: the next MX gets the message, under TLS', async () => {
    const broken = await mini('127.0.4.4', plainHandler(['STARTTLS'], (line, s) => {
      if (line !== 'STARTTLS') return null;
      s.write('220 go ahead');
      s.write('this is not a TLS server hello');
      return 'close';
    }));
    const tlsSink = await harness.startSink({ host: '127.0.4.5', port, hostname: 'tls.sink.test', starttls: true });
    twoMx('tlsfail.test', '127.0.4.4', '127.0.4.5');
    const r = await deliver(deps(), makeJob(bodies, ['u@tlsfail.test']));
    assert.deepEqual(replies(r), ['250 2.0.0']);
    assert.equal(broken.sessions.length, 1);
    assert.equal(tlsSink.messages.length, 1);
    assert.equal(tlsSink.messages[0]!.tls, true);
    assert.equal(r!.tls?.used, true);
    assert.equal(r!.tls?.verified, false, 'opportunistic TLS does not verify a self-signed certificate');
  });

  test('opportunistic TLS failing at every MX: delivered in clear text on a second pass', async () => {
    const broken = await mini('127.0.4.6', plainHandler(['STARTTLS'], (line, s) => {
      if (line !== 'STARTTLS') return null;
      s.write('220 go ahead');
      s.write('garbage');
      return 'close';
    }));
    dns.mx('tlsonly.test', 'mx.tlsonly.test').a('mx.tlsonly.test', '127.0.4.6');
    const r = await deliver(deps(), makeJob(bodies, ['u@tlsonly.test']));
    assert.deepEqual(replies(r), ['250 2.0.0']);
    assert.equal(broken.sessions.length, 2);
    assert.ok(broken.sessions[0]!.lines.includes('STARTTLS'));
    assert.ok(!broken.sessions[1]!.lines.includes('STARTTLS'), 'the second pass does not try TLS');
    assert.ok(broken.sessions[1]!.lines.some((l) => l.startsWith('MAIL FROM:')));
    assert.equal(r!.tls?.used, false);
  });

  test('a 5xx greeting is final for the message: the next MX is not tried', async () => {
    twoMx('greet5.test', '127.0.4.2', '127.0.4.3');
    sinkA.setBehaviour({ greeting: { code: 554, text: '5.7.1 no mail from you' } });
    const r = await deliver(deps(), makeJob(bodies, ['u@greet5.test', 'v@greet5.test']));
    assert.deepEqual(replies(r), ['554 5.7.1', '554 5.7.1']);
    assert.equal(r!.recipients[0]!.outcome, FAILED);
    assert.equal(r!.remoteHost, 'mx1.greet5.test');
    assert.equal(sinkB.connectionCount, 0);
  });

  test('a 5xx to MAIL is final for the message: every recipient fails with it, the next MX is not tried', async () => {
    twoMx('mail5.test', '127.0.4.2', '127.0.4.3');
    sinkA.setBehaviour({ mail: { code: 550, text: '5.7.1 sender refused' } });
    const r = await deliver(deps(), makeJob(bodies, ['u@mail5.test', 'v@mail5.test']));
    assert.deepEqual(replies(r), ['550 5.7.1', '550 5.7.1']);
    assert.equal(r!.recipients[1]!.outcome, FAILED);
    assert.equal(sinkA.messages.length, 0);
    assert.equal(sinkB.connectionCount, 0);
  });

  test('a 4xx to MAIL defers every recipient', async () => {
    dns.mx('mail4.test', 'mx.mail4.test').a('mx.mail4.test', '127.0.4.2');
    sinkA.setBehaviour({ mail: { code: 451, text: '4.7.1 slow down' } });
    const r = await deliver(deps(), makeJob(bodies, ['u@mail4.test']));
    assert.deepEqual(replies(r), ['451 4.7.1']);
    assert.equal(r!.recipients[0]!.outcome, DEFERRED);
  });

  test('null MX fails at once with 5.1.10, without a connection', async () => {
    dns.nullMx('nullmx.test').a('nullmx.test', '127.0.4.2');
    const r = await deliver(deps(), makeJob(bodies, ['u@nullmx.test']));
    assert.deepEqual(replies(r), ['556 5.1.10']);
    assert.equal(r!.recipients[0]!.outcome, FAILED);
    assert.equal(sinkA.connectionCount, 0);
  });

  test('no MX record: the domain A record is the implicit MX', async () => {
    dns.a('implicit.test', '127.0.4.2');
    const r = await deliver(deps(), makeJob(bodies, ['u@implicit.test'], { inline: true }));
    assert.deepEqual(replies(r), ['250 2.0.0']);
    assert.equal(r!.remoteHost, 'implicit.test');
    assert.equal(sinkA.messages.length, 1);
    assert.match(sinkA.messages[0]!.raw.toString(), /^From: a@sender\.test\r\n/, 'the inline body went out');
  });

  test('IPv6: an MX host with only an AAAA record is reached over IPv6', async () => {
    const p6 = await harness.freePort('::1');
    const sink6 = await harness.startSink({ host: '::1', port: p6, hostname: 'v6.sink.test' });
    dns.mx('v6.test', 'mx.v6.test').aaaa('mx.v6.test', '::1');
    const r = await deliver(deps({ port: p6 }), makeJob(bodies, ['u@v6.test']));
    assert.deepEqual(replies(r), ['250 2.0.0']);
    assert.equal(r!.remoteIp, '::1');
    assert.equal(sink6.messages.length, 1);
  });

  test('MX answers are cached for their TTL', async () => {
    dns.mx('ttl.test', 'mx1.ttl.test', 10, 2).a('mx1.ttl.test', '127.0.4.2').a('mx2.ttl.test', '127.0.4.3');
    dns.mx('longttl.test', 'mx1.ttl.test', 10, 3600);
    const d = deps();
    for (const domain of ['ttl.test', 'longttl.test']) assert.equal((await deliver(d, makeJob(bodies, [`u@${domain}`])))!.remoteHost, 'mx1.ttl.test');
    dns.remove('ttl.test', 'MX').mx('ttl.test', 'mx2.ttl.test', 10, 2);
    dns.remove('longttl.test', 'MX').mx('longttl.test', 'mx2.ttl.test', 10, 3600);
    await new Promise((r) => setTimeout(r, 2_100));
    assert.equal((await deliver(d, makeJob(bodies, ['u@ttl.test'])))!.remoteHost, 'mx2.ttl.test', 'the 2 s answer expired');
    assert.equal((await deliver(d, makeJob(bodies, ['u@longttl.test'])))!.remoteHost, 'mx1.ttl.test', 'the 1 h answer is still used');
  });

  test('a domain that does not exist fails with 5.1.2', async () => {
    const r = await deliver(deps(), makeJob(bodies, ['u@nowhere.test']));
    assert.deepEqual(replies(r), ['550 5.1.2']);
  });

  test('an MX naming an IP address is refused (5.4.4), the address is not dialled', async () => {
    dns.mx('ipmx.test', '127.0.4.2');
    const r = await deliver(deps(), makeJob(bodies, ['u@ipmx.test']));
    assert.deepEqual(replies(r), ['550 5.4.4']);
    assert.equal(r!.recipients[0]!.outcome, FAILED);
    assert.equal(sinkA.connectionCount, 0);
  });

  test('an MX naming ourselves loops: 5.4.6', async () => {
    dns.mx('loop.test', 'mx.tern.test').a('mx.tern.test', '127.0.4.2');
    const r = await deliver(deps(), makeJob(bodies, ['u@loop.test']));
    assert.deepEqual(replies(r), ['554 5.4.6']);
    assert.equal(sinkA.connectionCount, 0);
  });

  test('SERVFAIL for the MX query defers with 4.4.3', async () => {
    dns.servfail('servfail.test');
    const r = await deliver(deps(), makeJob(bodies, ['u@servfail.test']));
    assert.deepEqual(replies(r), ['451 4.4.3']);
    assert.equal(r!.recipients[0]!.outcome, DEFERRED);
    assert.equal(r!.destinationFailure, true);
  });

  test('SERVFAIL for the MX host address defers with 4.4.3', async () => {
    dns.mx('hostfail.test', 'mx.hostfail.test').servfail('mx.hostfail.test');
    const r = await deliver(deps(), makeJob(bodies, ['u@hostfail.test']));
    assert.deepEqual(replies(r), ['451 4.4.3']);
  });

  test('a DNS timeout defers with 4.4.3', async () => {
    dns.timeout('slowdns.test');
    const r = await deliver(deps({ dnsTimeoutMs: 200 }), makeJob(bodies, ['u@slowdns.test']));
    assert.deepEqual(replies(r), ['451 4.4.3']);
    assert.equal(r!.recipients[0]!.outcome, DEFERRED);
  });
});

describe('outcomes per recipient and stage', () => {
  before(() => {
    dns.mx('dest.test', 'mx.dest.test').a('mx.dest.test', '127.0.4.2');
  });

  test('4xx and 5xx at RCPT concern those recipients only', async () => {
    const r = await deliver(deps(), makeJob(bodies, ['ok@dest.test', 'tempfail-x@dest.test', 'permfail-y@dest.test']));
    assert.deepEqual(replies(r), ['250 2.0.0', '451 4.3.0', '550 5.1.1']);
    assert.deepEqual(r!.recipients.map((x) => x.outcome), [DELIVERED, DEFERRED, FAILED]);
    assert.equal(r!.destinationFailure, false);
    assert.deepEqual(sinkA.messages[0]!.rcptTo, ['ok@dest.test']);
  });

  test('every RCPT refused: no data is sent', async () => {
    const r = await deliver(deps(), makeJob(bodies, ['permfail-1@dest.test', 'tempfail-2@dest.test']));
    assert.deepEqual(replies(r), ['550 5.1.1', '451 4.3.0']);
    assert.equal(sinkA.messages.length, 0);
  });

  test('4xx at end of data defers the accepted recipients; refused ones keep their reply', async () => {
    sinkA.setBehaviour({ data: { code: 451, text: '4.3.0 try again later' } });
    const r = await deliver(deps(), makeJob(bodies, ['ok@dest.test', 'permfail-y@dest.test']));
    assert.deepEqual(replies(r), ['451 4.3.0', '550 5.1.1']);
    assert.deepEqual(r!.recipients.map((x) => x.outcome), [DEFERRED, FAILED]);
  });

  test('5xx at end of data fails the accepted recipients', async () => {
    sinkA.setBehaviour({ data: { code: 554, text: '5.6.0 content refused' } });
    const r = await deliver(deps(), makeJob(bodies, ['ok@dest.test', 'ok2@dest.test']));
    assert.deepEqual(replies(r), ['554 5.6.0', '554 5.6.0']);
    assert.equal(r!.recipients[0]!.outcome, FAILED);
  });

  test('5xx and 4xx to the DATA command', async () => {
    sinkA.setBehaviour({ dataCommand: { code: 554, text: '5.5.1 no data for you' } });
    let r = await deliver(deps(), makeJob(bodies, ['ok@dest.test', 'permfail-z@dest.test']));
    assert.deepEqual(replies(r), ['554 5.5.1', '550 5.1.1']);
    sinkA.setBehaviour({ dataCommand: { code: 451, text: '4.3.0 not now' } });
    r = await deliver(deps(), makeJob(bodies, ['ok@dest.test']));
    assert.deepEqual(replies(r), ['451 4.3.0']);
    assert.equal(r!.recipients[0]!.outcome, DEFERRED);
  });

  test('421 after the first RCPT: every recipient deferred with the 421, a destination failure', async () => {
    sinkA.setBehaviour({ rcpt: (to) => (to.startsWith('second') ? { code: 421, text: '4.3.2 shutting down' } : undefined) });
    const r = await deliver(deps(), makeJob(bodies, ['first@dest.test', 'second@dest.test', 'third@dest.test']));
    assert.deepEqual(replies(r), ['421 4.3.2', '421 4.3.2', '421 4.3.2']);
    assert.ok(r!.recipients.every((x) => x.outcome === DEFERRED));
    assert.equal(r!.destinationFailure, true);
    assert.equal(sinkA.messages.length, 0);
  });

  test('421 at end of data: deferred, a destination failure, and the session is not reused', async () => {
    sinkA.setBehaviour({ data: { code: 421, text: '4.3.2 going down' } });
    const d = deps();
    const r = await deliver(d, makeJob(bodies, ['ok@dest.test']));
    assert.deepEqual(replies(r), ['421 4.3.2']);
    assert.equal(r!.destinationFailure, true);
    sinkA.setBehaviour({});
    const r2 = await deliver(d, makeJob(bodies, ['ok@dest.test']));
    assert.deepEqual(replies(r2), ['250 2.0.0']);
    assert.equal(sinkA.connectionCount, 2);
  });

  test('a server that stops answering mid-session: deferred 4.4.2 after the command timeout', async () => {
    sinkA.setBehaviour({ rcpt: 'hang' });
    const r = await deliver(deps({ commandTimeoutMs: 300 }), makeJob(bodies, ['ok@dest.test']));
    assert.deepEqual(replies(r), ['451 4.4.2']);
    assert.equal(r!.destinationFailure, true);
  });

  test('a job whose lease has passed is dropped without a connection', async () => {
    const job = makeJob(bodies, ['ok@dest.test'], { leaseExpiresAt: new Date(Date.now() - 1000) });
    assert.equal(await deliver(deps(), job), undefined);
    assert.equal(sinkA.connectionCount, 0);
  });

  test('the queue cannot give the body: BodyUnavailableError (the job is retried, nothing is published)', async () => {
    const job = makeJob(bodies, ['ok@dest.test']);
    bodies.delete(job.queueId);
    await assert.rejects(deliver(deps(), job), BodyUnavailableError);
    assert.equal(sinkA.messages.length, 0);
  });
});

describe('extensions', () => {
  before(() => {
    dns.mx('ext.test', 'mx.ext.test').a('mx.ext.test', '127.0.4.2');
  });

  test('SIZE is declared with the message size', async () => {
    const job = makeJob(bodies, ['ok@ext.test']);
    await deliver(deps(), job);
    assert.equal(sinkA.messages[0]!.mailParams.SIZE, String(job.size));
  });

  test('a message bigger than the server SIZE fails 5.3.4 before MAIL', async () => {
    const small = await harness.startSink({ host: '127.0.4.7', port, hostname: 'small.sink.test', size: 1000 });
    dns.mx('small.test', 'mx.small.test').a('mx.small.test', '127.0.4.7');
    const r = await deliver(deps(), makeJob(bodies, ['u@small.test'], { body: `Subject: big\r\n\r\n${'x'.repeat(2000)}\r\n` }));
    assert.deepEqual(replies(r), ['552 5.3.4']);
    assert.equal(r!.recipients[0]!.outcome, FAILED);
    assert.ok(!small.connections[0]!.commands.includes('MAIL'), 'nothing was sent');
  });

  test('an SMTPUTF8 message to a server without SMTPUTF8 fails 5.6.7 before MAIL; with it, SMTPUTF8 is declared', async () => {
    const ascii = await harness.startSink({ host: '127.0.4.8', port, hostname: 'ascii.sink.test', smtputf8: false });
    dns.mx('ascii.test', 'mx.ascii.test').a('mx.ascii.test', '127.0.4.8');
    const body = 'Subject: caf\u00e9\r\n\r\nh\u00e9llo\r\n';
    let r = await deliver(deps(), makeJob(bodies, ['j\u00f6rg@ascii.test'], { body, envelope: { smtputf8: true } as never }));
    assert.deepEqual(replies(r), ['553 5.6.7']);
    assert.equal(r!.recipients[0]!.outcome, FAILED);
    assert.ok(!ascii.connections[0]!.commands.includes('MAIL'));
    r = await deliver(deps(), makeJob(bodies, ['j\u00f6rg@ext.test'], { body, envelope: { smtputf8: true } as never }));
    assert.deepEqual(replies(r), ['250 2.0.0']);
    assert.equal(sinkA.messages[0]!.mailParams.SMTPUTF8, true);
  });

  test('BODY=8BITMIME is declared for an 8-bit message', async () => {
    await deliver(deps(), makeJob(bodies, ['ok@ext.test'], { envelope: { bodyType: BodyType.BODY_TYPE_8BITMIME } as never }));
    assert.equal(sinkA.messages[0]!.mailParams.BODY, '8BITMIME');
  });

  test('DSN parameters are passed on where the server offers DSN, and not where it does not', async () => {
    const job = () =>
      makeJob(bodies, ['x+y@ext.test'], {
        envelope: { ret: DsnRet.DSN_RET_HDRS, envid: 'env id=1' } as never,
        recipients: [{ recipientId: 'r1', address: 'x+y@ext.test', orcpt: 'rfc822;x+y@ext.test', notify: [DsnNotify.DSN_NOTIFY_SUCCESS, DsnNotify.DSN_NOTIFY_FAILURE] }],
      });
    const r = await deliver(deps(), job());
    const m = sinkA.messages[0]!;
    assert.equal(m.mailParams.RET, 'HDRS');
    assert.equal(m.mailParams.ENVID, 'env+20id+3D1');
    assert.equal(m.rcptParams[0]!.NOTIFY, 'SUCCESS,FAILURE');
    assert.equal(m.rcptParams[0]!.ORCPT, 'rfc822;x+2By@ext.test');
    assert.equal(r!.recipients[0]!.remoteDsn, true);
    assert.equal(r!.recipients[0]!.finalDelivery, false, 'an MX is not a final delivery');

    const nodsn = await harness.startSink({ host: '127.0.4.10', port, hostname: 'nodsn.sink.test', dsn: false });
    dns.mx('nodsn.test', 'mx.nodsn.test').a('mx.nodsn.test', '127.0.4.10');
    const j = job();
    j.destination = 'nodsn.test';
    j.recipients[0]!.address = 'x@nodsn.test';
    const r2 = await deliver(deps(), j);
    const m2 = nodsn.messages[0]!;
    assert.equal(m2.mailParams.RET, undefined);
    assert.equal(m2.mailParams.ENVID, undefined);
    assert.deepEqual(m2.rcptParams[0], {});
    assert.equal(r2!.recipients[0]!.remoteDsn, false, 'the queue learns that a success notice is owed as "relayed"');
  });

  test('PIPELINING offered: MAIL, RCPT and DATA are sent before any reply to them', async () => {
    // This server answers nothing until DATA has arrived: a client that waits for each reply would time out.
    const pipe = await mini('127.0.4.11', plainHandler(['PIPELINING', 'SIZE 100000'], (line, s) => {
      const verb = line.split(' ')[0]!.toUpperCase();
      if (verb === 'MAIL' || verb === 'RCPT') {
        s.pending.push('250 2.0.0 ok');
        return undefined;
      }
      if (verb === 'DATA') {
        for (const p of s.pending.splice(0)) s.write(p);
        return '354 go ahead';
      }
      return null;
    }));
    dns.mx('pipe.test', 'mx.pipe.test').a('mx.pipe.test', '127.0.4.11');
    const r = await deliver(deps({ commandTimeoutMs: 2_000 }), makeJob(bodies, ['a@pipe.test', 'b@pipe.test']));
    assert.deepEqual(replies(r), ['250 2.0.0', '250 2.0.0']);
    const lines = pipe.sessions[0]!.lines;
    assert.deepEqual(lines.slice(1, 5).map((l) => l.split(' ')[0]), ['MAIL', 'RCPT', 'RCPT', 'DATA']);
  });

  test('PIPELINING not offered: each command waits for its reply', async () => {
    let sawEarly = false;
    const lock = await mini('127.0.4.12', plainHandler(['SIZE 100000'], (line, s) => {
      // Had the client pipelined, RCPT would already be in what arrived with MAIL.
      if (line.startsWith('MAIL')) sawEarly = s.chunks.at(-1)!.toString().includes('RCPT');
      return null;
    }));
    dns.mx('nopipe.test', 'mx.nopipe.test').a('mx.nopipe.test', '127.0.4.12');
    const r = await deliver(deps(), makeJob(bodies, ['a@nopipe.test']));
    assert.deepEqual(replies(r), ['250 2.0.0']);
    assert.equal(sawEarly, false);
    assert.deepEqual(lock.sessions[0]!.lines.slice(1, 4).map((l) => l.split(' ')[0]), ['MAIL', 'RCPT', 'DATA']);
  });

  test('EHLO refused: HELO, then a plain transaction without extensions', async () => {
    const old = await mini('127.0.4.13', plainHandler([], (line) => (line.startsWith('EHLO') ? '502 5.5.1 what is EHLO' : null)));
    dns.mx('old.test', 'mx.old.test').a('mx.old.test', '127.0.4.13');
    const r = await deliver(deps(), makeJob(bodies, ['a@old.test'], { envelope: { ret: DsnRet.DSN_RET_FULL } as never }));
    assert.deepEqual(replies(r), ['250 2.0.0']);
    const lines = old.sessions[0]!.lines;
    assert.equal(lines[0], 'EHLO mx.tern.test');
    assert.equal(lines[1], 'HELO mx.tern.test');
    assert.equal(lines[2], 'MAIL FROM:<a@sender.test>', 'no SIZE, RET or other parameters after HELO');
  });

  test('EHLO and HELO both refused with 5xx: the host refuses us, final', async () => {
    await mini('127.0.4.14', plainHandler([], (line) => (/^(EHLO|HELO)/.test(line) ? '550 5.7.1 not you' : null)));
    dns.mx('nohelo.test', 'mx.nohelo.test').a('mx.nohelo.test', '127.0.4.14');
    const r = await deliver(deps(), makeJob(bodies, ['a@nohelo.test']));
    assert.deepEqual(replies(r), ['550 5.7.1']);
    assert.equal(r!.recipients[0]!.outcome, FAILED);
  });
});

describe('body on the wire', () => {
  test('bare CR and bare LF are repaired to CRLF, dot-stuffing is right, and the data ends with CRLF.CRLF', async () => {
    const wire = await mini('127.0.4.15', plainHandler(['PIPELINING']));
    dns.mx('wire.test', 'mx.wire.test').a('mx.wire.test', '127.0.4.15');
    const body = 'Subject: smuggle\r\n\r\nline1\nline2\r.hidden\r\n.dot\r\n..two\r\n\n.\nMAIL FROM:<evil@x>\r\nlast';
    const r = await deliver(deps(), makeJob(bodies, ['a@wire.test'], { body }));
    assert.deepEqual(replies(r), ['250 2.0.0']);
    const got = wire.sessions[0]!.lastWire!.toString('latin1');
    assert.equal(got, 'Subject: smuggle\r\n\r\nline1\r\nline2\r\n..hidden\r\n..dot\r\n...two\r\n\r\n..\r\nMAIL FROM:<evil@x>\r\nlast\r\n.\r\n');
    assert.doesNotMatch(got.replace(/\r\n/g, ''), /[\r\n]/, 'no bare CR or LF on the wire');
    assert.deepEqual(wire.sessions[0]!.lines.filter((l) => l.startsWith('MAIL')), ['MAIL FROM:<a@sender.test>'], 'one transaction only');
  });

  test('a body ending in CRLF gets no extra empty line', async () => {
    const wire = await mini('127.0.4.16', plainHandler([]));
    dns.mx('wire2.test', 'mx.wire2.test').a('mx.wire2.test', '127.0.4.16');
    await deliver(deps(), makeJob(bodies, ['a@wire2.test'], { body: 'Subject: x\r\n\r\nbody\r\n' }));
    assert.equal(wire.sessions[0]!.lastWire!.toString('latin1'), 'Subject: x\r\n\r\nbody\r\n.\r\n');
  });
});

describe('CHUNKING (BDAT)', () => {
  test('BDAT instead of DATA where CHUNKING is offered: no dot-stuffing, bare LF still repaired, big bodies in several chunks', async () => {
    const chunky = await harness.startSink({ host: '127.0.4.17', port, hostname: 'chunky.sink.test', chunking: true });
    dns.mx('chunky.test', 'mx.chunky.test').a('mx.chunky.test', '127.0.4.17');
    const body = `Subject: chunks\r\n\r\n.leading dot\nbare LF\r\n${'0123456789abcdef'.repeat(8192)}\r\nend`;
    const r = await deliver(deps(), makeJob(bodies, ['a@chunky.test', 'permfail-b@chunky.test'], { body }));
    assert.deepEqual(replies(r), ['250 2.0.0', '550 5.1.1']);
    const m = chunky.messages[0]!;
    assert.equal(m.raw.toString('latin1'), body.replace('dot\nbare', 'dot\r\nbare') + '\r\n', 'the bare LF repaired, the dot as it was, a final CRLF added');
    const cmds = chunky.connections[0]!.commands;
    assert.ok(!cmds.includes('DATA'));
    assert.ok(cmds.filter((c) => c === 'BDAT').length >= 3, `several BDAT chunks: ${cmds.join(' ')}`);
  });

  test('a refused BDAT chunk ends the transaction with its reply', async () => {
    const chunky = await harness.startSink({ host: '127.0.4.18', port, hostname: 'chunky2.sink.test', chunking: true, behaviour: { data: { code: 554, text: '5.6.0 no thanks' } } });
    dns.mx('chunky2.test', 'mx.chunky2.test').a('mx.chunky2.test', '127.0.4.18');
    const r = await deliver(deps(), makeJob(bodies, ['a@chunky2.test']));
    assert.deepEqual(replies(r), ['554 5.6.0']);
    assert.equal(chunky.messages.length, 0);
  });

  test('a BINARYMIME message to a server without BINARYMIME fails 5.6.3 before MAIL (no conversion)', async () => {
    dns.mx('nobin.test', 'mx.nobin.test').a('mx.nobin.test', '127.0.4.2');
    const r = await deliver(deps(), makeJob(bodies, ['a@nobin.test'], { envelope: { bodyType: BodyType.BODY_TYPE_BINARYMIME } as never }));
    assert.deepEqual(replies(r), ['554 5.6.3']);
    assert.ok(!sinkA.connections[0]!.commands.includes('MAIL'));
  });
});

test('a server that stops reading in the middle of the data: deferred 4.4.2 after the command timeout, not a hang', async () => {
  await mini('127.0.4.19', plainHandler([], (line, s) => {
    if (line !== 'DATA') return null;
    s.pause();
    return '354 go ahead';
  }));
  dns.mx('stall.test', 'mx.stall.test').a('mx.stall.test', '127.0.4.19');
  const r = await deliver(deps({ commandTimeoutMs: 500 }), makeJob(bodies, ['a@stall.test'], { body: `Subject: big\r\n\r\n${'x'.repeat(998)}\r\n`.repeat(16_000), inline: true }));
  assert.deepEqual(replies(r), ['451 4.4.2']);
  assert.match(r!.recipients[0]!.reply!.text, /timed out while sending the message data/);
  assert.equal(r!.destinationFailure, true);
});

describe('connection reuse', () => {
  test('one session carries several jobs (RSET between), up to the per-connection cap', async () => {
    dns.mx('reuse.test', 'mx.reuse.test').a('mx.reuse.test', '127.0.4.2');
    const pool = new ConnectionPool({ maxMessagesPerConnection: 2, idleMs: 60_000, maxSessionsPerPeer: 20 });
    const d = deps({ pool });
    for (let i = 0; i < 5; i++) {
      const r = await deliver(d, makeJob(bodies, [`u${i}@reuse.test`]));
      assert.deepEqual(replies(r), ['250 2.0.0']);
    }
    await pool.close();
    assert.equal(sinkA.connectionCount, 3);
    assert.deepEqual(sinkA.messagesPerConnection(), [2, 2, 1]);
    assert.equal(pool.opened, 3);
    assert.equal(pool.reused, 2);
    const first = sinkA.connections[0]!.commands;
    assert.deepEqual(first.slice(0, 9), ['EHLO', 'MAIL', 'RCPT', 'DATA', 'RSET', 'MAIL', 'RCPT', 'DATA', 'QUIT']);
  });

  test('a session the server closed while idle is replaced by a new one', async () => {
    dns.mx('reuse2.test', 'mx.reuse2.test').a('mx.reuse2.test', '127.0.4.2');
    const pool = new ConnectionPool({ maxMessagesPerConnection: 10, idleMs: 60_000, maxSessionsPerPeer: 20 });
    const d = deps({ pool });
    await deliver(d, makeJob(bodies, ['u@reuse2.test']));
    // The server drops every connection (as after its idle timeout).
    await sinkA.close();
    await sinkA.start();
    const r = await deliver(d, makeJob(bodies, ['v@reuse2.test']));
    assert.deepEqual(replies(r), ['250 2.0.0']);
    assert.equal(pool.opened, 2);
    await pool.close();
  });

  test('a reused session: RSET leaves in the same write as MAIL, RCPT and DATA, and the body with its end of data in one write', async () => {
    const server = await mini('127.0.4.40', plainHandler(['PIPELINING']));
    dns.mx('reusepipe.test', 'mx.reusepipe.test').a('mx.reusepipe.test', '127.0.4.40');
    const pool = new ConnectionPool({ maxMessagesPerConnection: 10, idleMs: 60_000, maxSessionsPerPeer: 20 });
    const d = deps({ pool });
    for (const u of ['u', 'v']) assert.deepEqual(replies(await deliver(d, makeJob(bodies, [`${u}@reusepipe.test`]))), ['250 2.0.0']);
    await pool.close();
    assert.equal(server.sessions.length, 1);
    const s = server.sessions[0]!;
    assert.deepEqual(s.lines.slice(1, 8), ['MAIL FROM:<a@sender.test>', 'RCPT TO:<u@reusepipe.test>', 'DATA', 'RSET', 'MAIL FROM:<a@sender.test>', 'RCPT TO:<v@reusepipe.test>', 'DATA']);
    // The server answers each line as it comes, so a chunk is one client write.
    const writes = s.chunks.map((c) => c.toString('latin1'));
    assert.ok(writes.includes('RSET\r\nMAIL FROM:<a@sender.test>\r\nRCPT TO:<v@reusepipe.test>\r\nDATA\r\n'), `RSET pipelined: ${JSON.stringify(writes)}`);
    const bodyWrites = writes.filter((w) => w.endsWith('\r\n.\r\n'));
    assert.equal(bodyWrites.length, 2);
    assert.ok(bodyWrites.every((w) => w.length > 5), 'the end of data travels with the body');
  });

  for (const keywords of [['PIPELINING'], []]) {
    test(`a reused session that fails its RSET (${keywords.length ? 'pipelined' : 'no PIPELINING'}): the job goes on a new session, delivered, no attempt lost`, async () => {
      const host = keywords.length ? '127.0.4.41' : '127.0.4.42';
      const domain = keywords.length ? 'stalepipe.test' : 'stale.test';
      // The first session refuses RSET, as a server that has given up on an idle session might; the second closes on it.
      const endsOfData: number[] = [];
      await mini(host, plainHandler(keywords, (line, s) => {
        if (line === '.') endsOfData.push(s.id);
        if (line !== 'RSET') return null;
        if (s.id === 1) return '421 4.4.2 idle too long, closing';
        return 'close';
      }));
      dns.mx(domain, `mx.${domain}`).a(`mx.${domain}`, host);
      const pool = new ConnectionPool({ maxMessagesPerConnection: 10, idleMs: 60_000, maxSessionsPerPeer: 20 });
      const d = deps({ pool });
      for (const u of ['u', 'v', 'w']) {
        const r = await deliver(d, makeJob(bodies, [`${u}@${domain}`]));
        assert.deepEqual(replies(r), ['250 2.0.0'], `${u}: delivered`);
        assert.equal(r!.destinationFailure, false);
      }
      await pool.close();
      assert.equal(pool.opened, 3, 'a new session after each stale one');
      assert.deepEqual(endsOfData, [1, 2, 3], 'each message once, each on its own session');
    });
  }

  test('sessions are not shared between different next hops', async () => {
    twoMx('reuse3.test', '127.0.4.2', '127.0.4.3');
    dns.mx('reuse4.test', 'mx.reuse4.test').a('mx.reuse4.test', '127.0.4.3');
    const pool = new ConnectionPool({ maxMessagesPerConnection: 10, idleMs: 60_000, maxSessionsPerPeer: 20 });
    const d = deps({ pool });
    await deliver(d, makeJob(bodies, ['u@reuse3.test']));
    await deliver(d, makeJob(bodies, ['u@reuse4.test']));
    assert.equal(sinkA.messages.length, 1);
    assert.equal(sinkB.messages.length, 1);
    assert.equal(pool.opened, 2);
    await pool.close();
  });
});

describe('sessions per peer', () => {
  test('at most TERN_SMTP_MAX_SESSIONS_PER_PEER sessions to one peer: the other jobs wait and go over the sessions that come back', async () => {
    let maxOpen = 0;
    // The end of data is answered after 40 ms, so jobs overlap.
    const server = await mini('127.0.4.43', plainHandler(['PIPELINING'], (line, s) => {
      maxOpen = Math.max(maxOpen, server.openConnections);
      if (line !== '.') return null;
      setTimeout(() => s.write('250 2.0.0 queued'), 40);
      return undefined;
    }));
    dns.mx('capped.test', 'mx.capped.test').a('mx.capped.test', '127.0.4.43');
    const pool = new ConnectionPool({ maxMessagesPerConnection: 100, idleMs: 60_000, maxSessionsPerPeer: 2 });
    const d = deps({ pool });
    const results = await Promise.all(Array.from({ length: 6 }, (_, i) => deliver(d, makeJob(bodies, [`u${i}@capped.test`]))));
    for (const r of results) assert.deepEqual(replies(r), ['250 2.0.0']);
    assert.equal(server.sessions.length, 2, 'two sessions carried the six jobs');
    assert.ok(maxOpen <= 2, `at most 2 connections open at once (saw ${maxOpen})`);
    assert.equal(pool.opened, 2);
    assert.equal(pool.reused, 4);
    assert.ok(pool.waited >= 4, `jobs waited for a session (${pool.waited})`);
    assert.equal(pool.sessionsTo({ address: '127.0.4.43', port } as Parameters<typeof pool.sessionsTo>[0]), 2, 'both idle, still counted');
    await pool.close();
  });

  test('at the cap, an idle session to the peer under other options quits before a new one opens; a broken session frees its place', async () => {
    let maxOpen = 0;
    let breakNext = false;
    const server = await mini('127.0.4.44', plainHandler([], (line) => {
      maxOpen = Math.max(maxOpen, server.openConnections);
      if (line === '.' && breakNext) {
        breakNext = false;
        return 'close';
      }
      return null;
    }));
    // Two names for one address: sessions are keyed by the name (TLS checks), the cap by the address.
    dns.mx('one.capped.test', 'mx1.capped.test').a('mx1.capped.test', '127.0.4.44');
    dns.mx('two.capped.test', 'mx2.capped.test').a('mx2.capped.test', '127.0.4.44');
    const pool = new ConnectionPool({ maxMessagesPerConnection: 100, idleMs: 60_000, maxSessionsPerPeer: 1 });
    const d = deps({ pool });
    assert.deepEqual(replies(await deliver(d, makeJob(bodies, ['u@one.capped.test']))), ['250 2.0.0']);
    assert.deepEqual(replies(await deliver(d, makeJob(bodies, ['u@two.capped.test']))), ['250 2.0.0']);
    assert.equal(server.sessions.length, 2);
    assert.equal(server.sessions[0]!.lines.at(-1), 'QUIT', 'the idle session was closed with QUIT');
    assert.ok(maxOpen <= 1, `one connection at a time (saw ${maxOpen})`);
    // The session breaks at the end of data: deferred, and the next job is not kept waiting for its place.
    breakNext = true;
    const broken = await deliver(d, makeJob(bodies, ['v@two.capped.test']));
    assert.equal(broken!.recipients[0]!.reply!.code, 451);
    assert.deepEqual(replies(await deliver(d, makeJob(bodies, ['w@two.capped.test']))), ['250 2.0.0']);
    assert.equal(server.sessions.length, 3);
    await pool.close();
  });

  test('jobs waiting for a session when the pool closes fail on our side (the job is redelivered), not as a delivery failure', async () => {
    const server = await mini('127.0.4.45', plainHandler([], (line, s) => {
      if (line !== '.') return null;
      setTimeout(() => s.write('250 2.0.0 queued'), 100);
      return undefined;
    }));
    dns.mx('closing.test', 'mx.closing.test').a('mx.closing.test', '127.0.4.45');
    const pool = new ConnectionPool({ maxMessagesPerConnection: 100, idleMs: 60_000, maxSessionsPerPeer: 1 });
    const d = deps({ pool });
    const first = deliver(d, makeJob(bodies, ['u@closing.test']));
    const second = deliver(d, makeJob(bodies, ['v@closing.test'])).catch((err: unknown) => err);
    // The second job waits behind the first (DNS first, so poll rather than sleep).
    for (const deadline = Date.now() + 5_000; pool.waited < 1 && Date.now() < deadline; ) await new Promise((r) => setTimeout(r, 5));
    assert.equal(pool.waited, 1);
    await pool.close();
    assert.deepEqual(replies(await first), ['250 2.0.0']);
    assert.ok((await second) instanceof PoolClosedError, 'the waiting job failed with PoolClosedError');
    assert.equal(server.sessions.length, 1);
  });
});
