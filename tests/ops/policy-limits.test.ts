// Issue 7 through running ingress processes: rate limits hold across TWO
// ingress processes (each with its own policy process, sharing Postgres), and
// a Postfix policy delegation server (a small one in this test, speaking the
// attribute protocol) allows and rejects recipients in the SMTP dialogue.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { Harness, startPlatform, type Platform, type ServiceHandle } from '@tern/devkit';
import { RawSmtp, tern, type SmtpReply } from './helpers';

const harness = new Harness({ name: 'ops-policy-limits' });
let platform: Platform;
let ingress2: ServiceHandle;
let smtpPort2: number;
const asked: Array<Record<string, string>> = [];

/** A Postfix policy server: REJECT for local part "block", DEFER_IF_PERMIT for "later", DUNNO otherwise. */
async function policyServer(): Promise<number> {
  const server = net.createServer((socket) => {
    let buf = '';
    socket.setEncoding('utf8');
    socket.on('error', () => undefined);
    socket.on('data', (d: string) => {
      buf += d;
      let end;
      while ((end = buf.indexOf('\n\n')) >= 0) {
        const attrs: Record<string, string> = {};
        for (const line of buf.slice(0, end).split('\n')) attrs[line.slice(0, line.indexOf('='))] = line.slice(line.indexOf('=') + 1);
        buf = buf.slice(end + 2);
        asked.push(attrs);
        const local = (attrs.recipient ?? '').split('@')[0];
        const action = local === 'block' ? 'REJECT Go away' : local === 'later' ? 'DEFER_IF_PERMIT Try again tomorrow' : 'DUNNO';
        socket.write(`action=${action}\n\n`);
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  harness.defer(() => new Promise<void>((r) => server.close(() => r())), 'close policy server');
  return (server.address() as net.AddressInfo).port;
}

before(async () => {
  const db = await harness.createTestDatabase();
  await harness.runMigrate(db.url, { entry: 'libs/db/dist/migrate.js' });
  const nats = await harness.startNats();
  const dns = await harness.startDns({ host: '127.0.0.1' });
  const delegationPort = await policyServer();
  platform = await startPlatform(harness, {
    databaseUrl: db.url,
    natsUrl: nats.url,
    dnsServer: dns.address,
    remoteSmtpPort: await harness.freePort(),
    only: ['policy', 'queue', 'admin', 'ingress'],
    env: {
      policy: {
        TERN_LIMIT_MESSAGES_PER_IP: '3/1m',
        TERN_LIMIT_CONNECTIONS_PER_IP: '6/1m',
        TERN_POLICY_SERVERS: `127.0.0.1:${delegationPort}`,
        TERN_SPF_FAIL_ACTION: 'none',
      },
    },
  });
  // A second policy and a second ingress: the limits are counted in Postgres,
  // so they hold whichever pods a client's connections land on.
  const p = platform.services.policy;
  const policy2 = await harness.startService('policy', {
    ...p.env,
    TERN_GRPC_LISTEN: `127.0.0.1:${await harness.freePort()}`,
    TERN_METRICS_LISTEN: `127.0.0.1:${await harness.freePort()}`,
  });
  const i = platform.services.ingress;
  smtpPort2 = await harness.freePort();
  ingress2 = await harness.startService('ingress', {
    ...i.env,
    TERN_GRPC_LISTEN: `127.0.0.1:${await harness.freePort()}`,
    TERN_METRICS_LISTEN: `127.0.0.1:${await harness.freePort()}`,
    TERN_POLICY_ADDR: policy2.grpcAddr,
    TERN_SMTP_LISTEN: `127.0.0.1:${smtpPort2}`,
  });
  await tern(platform, 'domain', 'add', 'relay.test', '--kind', 'relay');
});

after(() => harness.close());

/** One SMTP session from `client` to ingress `n` (1 or 2); returns the replies to MAIL and RCPT. */
async function transaction(n: 1 | 2, client: string, from: string, to: string): Promise<{ greeting: SmtpReply; mail?: SmtpReply; rcpt?: SmtpReply }> {
  const { client: s, greeting } = await RawSmtp.connect('127.0.0.1', n === 1 ? platform.smtpPort : smtpPort2, client);
  try {
    if (greeting.code !== 220) return { greeting };
    await s.command('EHLO client.test');
    const mail = await s.command(`MAIL FROM:<${from}>`);
    if (mail.code !== 250) return { greeting, mail };
    const rcpt = await s.command(`RCPT TO:<${to}>`);
    await s.command('QUIT');
    return { greeting, mail, rcpt };
  } finally {
    s.close();
  }
}

test('messages per client IP are limited across two ingress (and policy) processes: the 4th MAIL gets 450 4.7.1', async () => {
  const client = '127.0.0.31';
  const codes: number[] = [];
  let last: SmtpReply | undefined;
  for (let k = 0; k < 4; k++) {
    const r = await transaction(k % 2 ? 2 : 1, client, `s${k}@outside.test`, `r${k}@relay.test`);
    last = r.mail;
    codes.push(r.mail?.code ?? r.greeting.code);
  }
  assert.deepEqual(codes, [250, 250, 250, 450]);
  assert.equal(last!.enhanced, '4.7.1');
  assert.match(last!.lines.join(' '), /too much mail from 127\.0\.0\.31/);
  // Another client is not affected.
  assert.equal((await transaction(2, '127.0.0.32', 'x@outside.test', 'y@relay.test')).mail?.code, 250);
  assert.ok(ingress2.running);
});

test('connections per client IP are limited across both ingress processes: 421 4.7.0 at the greeting', async () => {
  const client = '127.0.0.33';
  const greetings: number[] = [];
  for (let k = 0; k < 7; k++) {
    const { client: s, greeting: g } = await RawSmtp.connect('127.0.0.1', k % 2 ? smtpPort2 : platform.smtpPort, client);
    greetings.push(g.code);
    if (g.code === 421) assert.equal(g.enhanced, '4.7.0');
    s.close();
  }
  assert.deepEqual(greetings, [220, 220, 220, 220, 220, 220, 421]);
});

test('a Postfix policy delegation server allows and rejects recipients in the dialogue', async () => {
  const before = asked.length;
  const ok = await transaction(1, '127.0.0.34', 'a@outside.test', 'friend@relay.test');
  assert.equal(ok.rcpt?.code, 250);
  const blocked = await transaction(2, '127.0.0.35', 'a@outside.test', 'block@relay.test');
  assert.equal(blocked.rcpt?.code, 554);
  assert.equal(blocked.rcpt?.enhanced, '5.7.1');
  assert.match(blocked.rcpt!.lines.join(' '), /<block@relay\.test>: Recipient address rejected: Go away/);
  const later = await transaction(1, '127.0.0.36', 'a@outside.test', 'later@relay.test');
  assert.equal(later.rcpt?.code, 450);
  assert.equal(later.rcpt?.enhanced, '4.7.1');
  const attrs = asked.slice(before);
  assert.ok(attrs.length >= 3, 'the server was asked for each recipient');
  const blockAsk = attrs.find((a) => a.recipient === 'block@relay.test')!;
  assert.equal(blockAsk.request, 'smtpd_access_policy');
  assert.equal(blockAsk.protocol_state, 'RCPT');
  assert.equal(blockAsk.client_address, '127.0.0.35');
  assert.equal(blockAsk.helo_name, 'client.test');
  assert.equal(blockAsk.sender, 'a@outside.test');
});
