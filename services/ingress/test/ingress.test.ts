import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { execFileSync } from 'node:child_process';
import { grpc } from '@tern/grpc';
import { BodyType, CheckStage, DsnNotify, DsnRet, Listener, PolicyAction } from '@tern/proto';
import { ConfigError } from '@tern/config';
import { RawClient, selfSignedCert } from '../../../libs/smtp/test/helpers';
import { loadConfig } from '../src/config';
import { startIngress } from './fakes';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function ready(port: number): Promise<RawClient> {
  const c = await RawClient.connect(port);
  assert.equal((await c.read()).code, 220);
  assert.equal((await c.cmd('EHLO client.example')).code, 250);
  return c;
}

test('a message is streamed to the queue with a Received header; 250 only with the queue id', async () => {
  const h = await startIngress();
  try {
    const c = await ready(h.app.ports.smtp!);
    assert.equal((await c.cmd('MAIL FROM:<sender@example.org> SIZE=40 BODY=8BITMIME RET=HDRS ENVID=env+2B1')).code, 250);
    assert.equal((await c.cmd('RCPT TO:<rcpt@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;orig@example.net')).code, 250);
    assert.equal((await c.cmd('DATA')).code, 354);
    c.send('Subject: hi\r\n\r\n..dotted\r\nbody\r\n.\r\n');
    const r = await c.read();
    assert.equal(r.raw, '250 2.0.0 Ok: queued as Q000001\r\n');
    const m = h.queue.stored[0]!;
    const text = m.body.toString();
    assert.match(text, /^Received: from client\.example \(unknown \[127\.0\.0\.1\]\)\r\n\tby mx\.tern\.test \(Tern\) with ESMTP id \w+\r\n\tfor <rcpt@example\.net>; \w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d \+0000\r\n/);
    assert.ok(text.endsWith('\r\nSubject: hi\r\n\r\n.dotted\r\nbody\r\n'), text);
    const e = m.header.envelope!;
    assert.equal(e.sender, 'sender@example.org');
    assert.equal(e.envid, 'env+1');
    assert.equal(e.ret, DsnRet.DSN_RET_HDRS);
    assert.equal(e.bodyType, BodyType.BODY_TYPE_8BITMIME);
    assert.equal(e.clientAddress, '127.0.0.1');
    assert.equal(e.heloName, 'client.example');
    assert.equal(e.protocol, 'ESMTP');
    assert.equal(e.listener, Listener.LISTENER_MX);
    assert.equal(e.declaredSize, 40);
    assert.ok(e.arrivalTime instanceof Date);
    assert.deepEqual(m.header.recipients, [{ address: 'rcpt@example.net', orcpt: 'rfc822;orig@example.net', notify: [DsnNotify.DSN_NOTIFY_SUCCESS, DsnNotify.DSN_NOTIFY_FAILURE] }]);
    assert.equal(m.header.hold, false);
    // Policy was asked at every stage, with the session and one trace throughout.
    assert.deepEqual(h.policy.stages(), [CheckStage.CHECK_STAGE_CONNECT, CheckStage.CHECK_STAGE_HELO, CheckStage.CHECK_STAGE_MAIL, CheckStage.CHECK_STAGE_RCPT]);
    const rcptCheck = h.policy.checks[3]!.request;
    assert.equal(rcptCheck.recipient, 'rcpt@example.net');
    assert.equal(rcptCheck.sender, 'sender@example.org');
    assert.equal(rcptCheck.session?.heloName, 'client.example');
    const traceOf = (tp: string | undefined) => tp?.split('-')[1];
    assert.ok(traceOf(h.policy.checks[2]!.traceparent));
    assert.equal(traceOf(h.policy.checks[2]!.traceparent), traceOf(h.policy.checks[3]!.traceparent));
    assert.equal(traceOf(m.traceparent), traceOf(h.policy.checks[3]!.traceparent), 'Enqueue carries the transaction trace');
    assert.equal(traceOf(h.policy.checks[0]!.traceparent), traceOf(m.traceparent), 'the session span is the root');
    // AUTH is not offered on the MX listener.
    const ehlo = await c.cmd('EHLO client.example');
    assert.ok(!ehlo.lines.some((l) => l.startsWith('AUTH')));
    c.close();
  } finally {
    await h.stop();
  }
});

test('reusable policy accepts (cache_ms) answer an identical request without a call; refusals and other requests still ask', async () => {
  const h = await startIngress();
  try {
    h.policy.decide = (req) =>
      req.stage === CheckStage.CHECK_STAGE_RCPT && req.recipient === 'no@example.net'
        ? { action: PolicyAction.POLICY_ACTION_REJECT, reply: { code: 550, enhanced: '5.1.1', text: 'no such user' }, cacheMs: 60_000 }
        : { action: PolicyAction.POLICY_ACTION_ACCEPT, cacheMs: req.recipient === 'fresh@example.net' ? 0 : 60_000 };
    const session = async (rcpt: string) => {
      const c = await ready(h.app.ports.smtp!);
      assert.equal((await c.cmd('MAIL FROM:<sender@example.org>')).code, 250);
      const code = (await c.cmd(`RCPT TO:<${rcpt}>`)).code;
      c.close();
      return code;
    };
    assert.equal(await session('rcpt@example.net'), 250);
    assert.equal(h.policy.checks.length, 4);
    // A second session (other port, other session id), same request: no call at all.
    assert.equal(await session('rcpt@example.net'), 250);
    assert.equal(h.policy.checks.length, 4);
    // Another recipient is another request; an accept without cache_ms is asked every time.
    assert.equal(await session('fresh@example.net'), 250);
    assert.equal(await session('fresh@example.net'), 250);
    assert.equal(h.policy.checks.filter((c) => c.request.recipient === 'fresh@example.net').length, 2);
    // Refusals are never reused, whatever cache_ms says.
    assert.equal(await session('no@example.net'), 550);
    assert.equal(await session('no@example.net'), 550);
    assert.equal(h.policy.checks.filter((c) => c.request.recipient === 'no@example.net').length, 2);
  } finally {
    await h.stop();
  }
});

test('policy errors and timeouts answer 451 4.3.0 (421 at connect), never an accept', async () => {
  const h = await startIngress({ TERN_POLICY_DEADLINE_MS: '200' });
  try {
    h.policy.decide = (req) => {
      if (req.stage === CheckStage.CHECK_STAGE_MAIL && req.sender.startsWith('slow')) return sleep(600).then(() => ({ action: PolicyAction.POLICY_ACTION_ACCEPT }));
      if (req.stage === CheckStage.CHECK_STAGE_RCPT) throw { code: grpc.status.INTERNAL, details: 'boom' };
      return { action: PolicyAction.POLICY_ACTION_ACCEPT };
    };
    const c = await ready(h.app.ports.smtp!);
    assert.equal((await c.cmd('MAIL FROM:<slow@example.org>')).raw, '451 4.3.0 Error: temporary policy failure, try again later\r\n');
    assert.equal((await c.cmd('MAIL FROM:<ok@example.org>')).code, 250);
    assert.equal((await c.cmd('RCPT TO:<r@example.net>')).raw, '451 4.3.0 Error: temporary policy failure, try again later\r\n');
    c.close();
    h.policy.decide = () => ({ action: PolicyAction.POLICY_ACTION_UNSPECIFIED });
    const d = await RawClient.connect(h.app.ports.smtp!);
    assert.match((await d.read()).raw, /^421 4\.3\.0 /);
    await d.waitClosed();
    await h.policy.stop();
    const e = await RawClient.connect(h.app.ports.smtp!);
    assert.match((await e.read()).raw, /^421 4\.3\.0 /);
  } finally {
    await h.stop();
  }
});

test('policy refusals, deferrals and HOLD pass through', async () => {
  const h = await startIngress();
  try {
    h.policy.decide = (req) => {
      if (req.recipient.startsWith('unknown')) return { action: PolicyAction.POLICY_ACTION_REJECT, reply: { code: 550, enhanced: '5.1.1', text: `<${req.recipient}>: Recipient address rejected: User unknown` } };
      if (req.recipient.startsWith('grey')) return { action: PolicyAction.POLICY_ACTION_DEFER, reply: { code: 450, enhanced: '4.2.0', text: 'Greylisted' } };
      if (req.recipient.startsWith('relay')) return { action: PolicyAction.POLICY_ACTION_REJECT };
      if (req.recipient.startsWith('hold')) return { action: PolicyAction.POLICY_ACTION_HOLD };
      return { action: PolicyAction.POLICY_ACTION_ACCEPT };
    };
    const c = await ready(h.app.ports.smtp!);
    await c.cmd('MAIL FROM:<s@example.org>');
    assert.equal((await c.cmd('RCPT TO:<unknown@example.net>')).raw, '550 5.1.1 <unknown@example.net>: Recipient address rejected: User unknown\r\n');
    assert.equal((await c.cmd('RCPT TO:<grey@example.net>')).raw, '450 4.2.0 Greylisted\r\n');
    assert.equal((await c.cmd('RCPT TO:<relay@example.net>')).raw, '554 5.7.1 Rejected by policy\r\n');
    assert.equal((await c.cmd('RCPT TO:<hold@example.net>')).code, 250);
    await c.cmd('DATA');
    c.send('x\r\n.\r\n');
    assert.equal((await c.read()).code, 250);
    assert.equal(h.queue.stored[0]!.header.hold, true);
    assert.deepEqual(h.queue.stored[0]!.header.recipients.map((r) => r.address), ['hold@example.net']);
    c.close();
  } finally {
    await h.stop();
  }
});

test('queue over its high-water mark or unreachable: 4xx at DATA; enqueue failure: 451, never 250', async () => {
  const h = await startIngress({ TERN_QUEUE_STATUS_CACHE_MS: '50', TERN_ENQUEUE_COMMIT_TIMEOUT_MS: '300' });
  try {
    const c = await ready(h.app.ports.smtp!);
    const tx = async () => {
      await c.cmd('RSET');
      assert.equal((await c.cmd('MAIL FROM:<s@example.org>')).code, 250);
      assert.equal((await c.cmd('RCPT TO:<r@example.net>')).code, 250);
      return c.cmd('DATA');
    };
    h.queue.accepting = false;
    await sleep(120);
    assert.equal((await tx()).raw, '452 4.3.1 Insufficient system storage\r\n');
    h.queue.accepting = true;
    await sleep(120);
    assert.equal((await tx()).code, 354);
    h.queue.mode = 'error';
    c.send('x\r\n.\r\n');
    assert.equal((await c.read()).raw, '451 4.3.0 Error: queue file write error, try again later\r\n');
    h.queue.mode = 'hang';
    await sleep(120);
    assert.equal((await tx()).code, 354);
    c.send('x\r\n.\r\n');
    assert.equal((await c.read()).code, 451, 'no commit within the timeout');
    assert.equal(h.queue.stored.length, 0);
    await h.queue.stop();
    await sleep(200);
    assert.equal((await tx()).raw, '451 4.3.0 Error: queue unavailable, try again later\r\n');
    assert.equal(h.app.ready(), false, 'not ready while the queue is unreachable');
    c.close();
  } finally {
    await h.stop();
  }
});

test('smuggling or an oversized message cancels the Enqueue call: nothing stored', async () => {
  // Every message streamed (no EnqueueBatch), to see the stream being cancelled.
  const h = await startIngress({ TERN_MAX_MESSAGE_SIZE: '100000', TERN_ENQUEUE_BATCH_BODY_MAX: '0' });
  try {
    const c = await ready(h.app.ports.smtp!);
    await c.cmd('MAIL FROM:<s@example.org>');
    await c.cmd('RCPT TO:<r@example.net>');
    await c.cmd('DATA');
    c.send(`Subject: a\r\n\r\n${'x'.repeat(70000)}\r\nhello\n.\r\nMAIL FROM:<evil@example.org>\r\n`);
    await sleep(50);
    c.send(`${'y'.repeat(900)}\r\n\r\n.\r\n`);
    assert.match((await c.read()).raw, /^554 5\.6\.0 /);
    await c.cmd('MAIL FROM:<s@example.org>');
    await c.cmd('RCPT TO:<r@example.net>');
    await c.cmd('DATA');
    for (let i = 0; i < 120; i++) c.send(`${'z'.repeat(998)}\r\n`);
    c.send('.\r\n');
    assert.match((await c.read()).raw, /^552 5\.3\.4 /);
    await sleep(100);
    assert.equal(h.queue.stored.length, 0);
    assert.equal(h.queue.cancelled + h.queue.rejected, 2, 'both Enqueue calls were cancelled or refused');
    c.close();
  } finally {
    await h.stop();
  }
});

function tlsEnv(): Record<string, string> {
  const { certFile, keyFile } = selfSignedCert();
  return { TERN_TLS_CERT_FILE: certFile, TERN_TLS_KEY_FILE: keyFile };
}

test('submission: STARTTLS, AUTH through policy, Message-ID and Date added, ESMTPSA', async () => {
  const h = await startIngress(tlsEnv());
  try {
    const c = await ready(h.app.ports.submission!);
    assert.equal((await c.cmd('MAIL FROM:<alice@example.org>')).code, 530);
    assert.equal((await c.cmd('STARTTLS')).code, 220);
    await c.startTls();
    const e = await c.cmd('EHLO client.example');
    assert.ok(e.lines.includes('AUTH PLAIN LOGIN'));
    assert.equal((await c.cmd(`AUTH PLAIN ${Buffer.from('\0alice\0wrong').toString('base64')}`)).raw, '535 5.7.8 Authentication credentials invalid\r\n');
    assert.equal((await c.cmd(`AUTH PLAIN ${Buffer.from('\0alice\0secret').toString('base64')}`)).code, 235);
    assert.equal((await c.cmd('MAIL FROM:<alice@example.org>')).code, 250);
    await c.cmd('RCPT TO:<r1@example.net>');
    await c.cmd('RCPT TO:<r2@example.net>');
    await c.cmd('DATA');
    c.send('Subject: no id\r\n\r\nbody\r\n.\r\n');
    assert.equal((await c.read()).code, 250);
    const m = h.queue.stored[0]!;
    const text = m.body.toString();
    assert.match(text, /^Received: from client\.example \(unknown \[127\.0\.0\.1\]\)\r\n\t\(using TLSv1\.3 with cipher TLS_\w+ \(\d+\/\d+ bits\)\)\r\n\tby mx\.tern\.test \(Tern\) with ESMTPSA id \w+ tls TLS_\w+; .+\r\nMessage-ID: <[^>]+@mx\.tern\.test>\r\nDate: .+ \+0000\r\nSubject: no id\r\n\r\nbody\r\n$/);
    assert.doesNotMatch(text, /for </, 'no "for" with two recipients');
    assert.equal(m.header.envelope!.authUser, 'alice');
    assert.equal(m.header.envelope!.protocol, 'ESMTPSA');
    assert.equal(m.header.envelope!.listener, Listener.LISTENER_SUBMISSION);
    assert.equal(h.policy.auths[0]!.session?.tls?.used, true);
    // A message with its own Message-ID and Date keeps them, unchanged.
    await c.cmd('MAIL FROM:<alice@example.org>');
    await c.cmd('RCPT TO:<r1@example.net>');
    await c.cmd('DATA');
    c.send('Message-ID: <x@y>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\nb\r\n.\r\n');
    assert.equal((await c.read()).code, 250);
    const second = h.queue.stored[1]!.body.toString();
    assert.equal(second.match(/^Message-ID:/gim)?.length, 1);
    assert.ok(second.endsWith('\r\nMessage-ID: <x@y>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\nb\r\n'));
    c.close();
  } finally {
    await h.stop();
  }
});

test('TLS certificate files are reloaded when they change', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-ingress-reload-'));
  const make = (cn: string) =>
    execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', path.join(dir, 'key.pem'), '-out', path.join(dir, 'cert.pem'), '-days', '1', '-subj', `/CN=${cn}`], { stdio: 'ignore' });
  make('first.test');
  const h = await startIngress({ TERN_TLS_CERT_FILE: path.join(dir, 'cert.pem'), TERN_TLS_KEY_FILE: path.join(dir, 'key.pem'), TERN_TLS_RELOAD_MS: '100' });
  const subject = async () => {
    const s = tls.connect({ port: h.app.ports.submissions!, host: '127.0.0.1', rejectUnauthorized: false });
    await new Promise((r) => s.once('secureConnect', r));
    const cn = s.getPeerCertificate().subject.CN;
    s.destroy();
    return cn;
  };
  try {
    assert.equal(await subject(), 'first.test');
    make('second.test');
    await sleep(400);
    assert.equal(await subject(), 'second.test');
  } finally {
    await h.stop();
  }
});

test('stop: idle sessions get 421 4.3.2, new connections are refused', async () => {
  const h = await startIngress();
  const c = await ready(h.app.ports.smtp!);
  const port = h.app.ports.smtp!;
  const stopping = h.stop();
  assert.match((await c.read()).raw, /^421 4\.3\.2 /);
  await stopping;
  await assert.rejects(RawClient.connect(port));
});

test('configuration errors name the variable', () => {
  const base = { TERN_POLICY_ADDR: '127.0.0.1:7002', TERN_QUEUE_ADDR: '127.0.0.1:7003' };
  const c = loadConfig(base);
  assert.deepEqual(c.TERN_SMTP_LISTEN, { host: '0.0.0.0', port: 2525 });
  assert.deepEqual(c.TERN_SUBMISSION_LISTEN, { host: '0.0.0.0', port: 2587 });
  assert.deepEqual(c.TERN_SUBMISSIONS_LISTEN, { host: '0.0.0.0', port: 2465 });
  assert.equal(c.TERN_MAX_MESSAGE_SIZE, 52_428_800);
  assert.equal(loadConfig({ ...base, TERN_SUBMISSION_LISTEN: 'off' }).TERN_SUBMISSION_LISTEN, null);
  const bad = (env: Record<string, string>, variable: string) => {
    try {
      loadConfig({ ...base, ...env });
      assert.fail('expected a ConfigError');
    } catch (err) {
      assert.ok(err instanceof ConfigError);
      assert.ok(err.problems.some((p) => p.variable === variable), JSON.stringify(err.problems));
    }
  };
  bad({ TERN_SMTP_LISTEN: 'nonsense' }, 'TERN_SMTP_LISTEN');
  bad({ TERN_MAX_RECIPIENTS: '0' }, 'TERN_MAX_RECIPIENTS');
  bad({ TERN_PROXY_PROTOCOL_CIDRS: '10.0.0.0/99' }, 'TERN_PROXY_PROTOCOL_CIDRS');
  bad({ TERN_TLS_CERT_FILE: '/nonexistent' }, 'TERN_TLS_KEY_FILE');
  bad({ TERN_TLS_CERT_FILE: '/nonexistent', TERN_TLS_KEY_FILE: '/nonexistent' }, 'TERN_TLS_CERT_FILE');
  bad({ TERN_POLICY_ADDR: '' }, 'TERN_POLICY_ADDR');
});
