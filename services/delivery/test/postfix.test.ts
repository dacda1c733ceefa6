// Tern delivering into a real Postfix (Debian package postfix) as the
// receiving MTA: a private instance on 127.0.4.60 with STARTTLS, Maildir
// delivery for dest.test, and Postfix's own refusal of unknown users. The MX
// of dest.test points at it through the test DNS server.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { Harness, postfixAvailable, startPostfix, type DnsServer, type PostfixHandle } from '@tern/devkit';
import { AttemptOutcome, DsnNotify } from '@tern/proto';
import { ConnectionPool } from '../src/pool';
import { deliver } from '../src/worker';
import { makeDeps, makeJob } from './helpers';

const skip = postfixAvailable() ? false : 'postfix is not installed (apt-get install postfix; scripts/system-deps.sh installs it)';
const harness = new Harness({ name: 'delivery-postfix' });
const bodies = new Map<string, Buffer>();
let dns: DnsServer;
let postfix: PostfixHandle;
let port: number;

before(async () => {
  if (skip) return;
  dns = await harness.startDns({ host: '127.0.4.1' });
  port = await harness.freePort('127.0.4.60');
  postfix = await startPostfix({ host: '127.0.4.60', port, starttls: true, hostname: 'mx.dest.test', mailboxes: ['bob@dest.test', 'carol@dest.test'] });
  harness.defer(() => postfix.stop(), 'stop postfix');
  dns.mx('dest.test', 'mx.dest.test').a('mx.dest.test', '127.0.4.60');
});

after(() => harness.close());

test('delivers into Postfix over STARTTLS: per-recipient replies (unknown user refused), body intact, one session for two jobs', { skip }, async () => {
  const pool = new ConnectionPool({ maxMessagesPerConnection: 10, idleMs: 60_000, maxSessionsPerPeer: 20 });
  const deps = makeDeps({ dns: dns.address, port, bodies, pool });
  const body = 'From: alice@sender.test\r\nTo: bob@dest.test\r\nSubject: into postfix\r\nMessage-ID: <pf-1@sender.test>\r\n\r\n.leading dot\r\nbare\nLF\r\n..two dots\r\nend\r\n';
  const r1 = await deliver(
    deps,
    makeJob(bodies, ['bob@dest.test', 'nobody@dest.test', 'carol@dest.test'], {
      body,
      recipients: [
        { recipientId: 'a', address: 'bob@dest.test', orcpt: 'rfc822;bob@dest.test', notify: [DsnNotify.DSN_NOTIFY_FAILURE] },
        { recipientId: 'b', address: 'nobody@dest.test', orcpt: '', notify: [] },
        { recipientId: 'c', address: 'carol@dest.test', orcpt: '', notify: [] },
      ],
    }),
  );
  assert.ok(r1);
  const summary = r1.recipients.map((x) => `${x.reply?.code} ${x.reply?.enhanced}`);
  assert.deepEqual(summary, ['250 2.0.0', '550 5.1.1', '250 2.0.0'], `${JSON.stringify(r1.recipients)}\n${postfix.logTail()}`);
  assert.deepEqual(r1.recipients.map((x) => x.outcome), [AttemptOutcome.ATTEMPT_OUTCOME_DELIVERED, AttemptOutcome.ATTEMPT_OUTCOME_FAILED, AttemptOutcome.ATTEMPT_OUTCOME_DELIVERED]);
  assert.match(r1.recipients[0]!.reply!.text, /queued as/);
  assert.match(r1.recipients[1]!.reply!.text, /User unknown/i);
  assert.equal(r1.remoteHost, 'mx.dest.test');
  assert.equal(r1.tls?.used, true, 'STARTTLS with Postfix');
  assert.match(r1.tls!.version, /^TLSv1\.[23]$/);
  assert.equal(r1.recipients[0]!.remoteDsn, true, 'Postfix offers DSN');

  const r2 = await deliver(deps, makeJob(bodies, ['bob@dest.test'], { body: 'Subject: second\r\n\r\nsecond\r\n' }));
  assert.equal(r2!.recipients[0]!.reply?.code, 250);
  assert.equal(pool.opened, 1, 'the second job reused the session');
  assert.equal(pool.reused, 1);
  await pool.close();

  const stored = (await postfix.waitForMail('bob@dest.test', 2)).map((b) => b.toString('latin1'));
  const text = stored.find((m) => m.includes('<pf-1@sender.test>'))!;
  const second = stored.find((m) => m.includes('Subject: second'))!;
  assert.ok(text && second, 'both messages are in the Maildir');
  // Postfix stores LF line ends in the Maildir; the content must be exactly ours.
  assert.match(text, /^Received: from mx\.tern\.test [^]*?by mx\.dest\.test \(Postfix\) with ESMTPS/m);
  assert.match(text, /^Message-ID: <pf-1@sender\.test>$/m);
  assert.ok(text.endsWith('\n\n.leading dot\nbare\nLF\n..two dots\nend\n'), text);
  assert.match(second, /\n\nsecond\n$/);
  assert.equal((await postfix.waitForMail('carol@dest.test', 1)).length, 1);
});
