// The real `tern` binary (spawned, as an operator runs it) against the admin
// service in-process in front of fake queue and policy services.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { grpc } from '@tern/grpc';
import { AttemptOutcome, DomainKind, QueueAction, RecipientState, RouteKind } from '@tern/proto';
import type { App } from '../../services/admin/src/app';
import { deadPort, fakePolicy, fakeQueue, makePki, startAdmin, TOKENS, type FakeOwner } from '../../services/admin/test/fakes';

const ROOT = path.resolve(__dirname, '../..');
const NODE = fs.existsSync(path.join(ROOT, 'node_modules/.bin/node')) ? path.join(ROOT, 'node_modules/.bin/node') : process.execPath;
const BIN = path.join(ROOT, 'cli/bin/tern.js');
const EMPTY_DIR = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-cli-'));

interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

function tern(args: string[], env: Record<string, string> = {}, opts: { input?: string; cwd?: string } = {}): Promise<Result> {
  return new Promise((resolve) => {
    const child = execFile(
      NODE,
      [BIN, ...args],
      {
        // A clean environment: no token or address from the caller's shell.
        env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', ...env },
        cwd: opts.cwd ?? EMPTY_DIR,
        timeout: 30_000,
      },
      (err, stdout, stderr) => {
        const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : 1) : 0;
        resolve({ code, stdout: String(stdout), stderr: String(stderr) });
      },
    );
    if (opts.input !== undefined) child.stdin!.end(opts.input);
    else child.stdin!.end();
  });
}

const T0 = new Date(Date.now() - 2 * 3600_000);

const message = {
  queueId: 'QX7ABC',
  envelope: { sender: 'alice@sender.test', clientAddress: '127.0.0.2', clientName: 'client.example', heloName: 'client.example', protocol: 'ESMTP', arrivalTime: T0 },
  size: 2048,
  createdAt: T0,
  recipients: [
    {
      address: 'bob@example.test',
      state: RecipientState.RECIPIENT_STATE_DEFERRED,
      destination: 'example.test',
      attemptCount: 1,
      nextAttemptAt: new Date(Date.now() + 300_000),
      lastReply: { code: 451, enhanced: '4.3.0', text: 'try later' },
      attempts: [
        {
          startedAt: new Date(T0.getTime() + 1000),
          durationMs: 120,
          remoteHost: 'mx.example.test',
          remoteIp: '127.0.0.9',
          reply: { code: 451, enhanced: '4.3.0', text: 'try later' },
          outcome: AttemptOutcome.ATTEMPT_OUTCOME_DEFERRED,
        },
      ],
    },
    { address: 'carol@example.test', state: RecipientState.RECIPIENT_STATE_DELIVERED, destination: 'example.test', attemptCount: 1 },
  ],
  operatorEvents: [{ at: new Date(T0.getTime() + 5000), operator: 'alice', action: 'hold', reason: 'checking' }],
};

describe('tern CLI', () => {
  let queue: FakeOwner;
  let policy: FakeOwner;
  let app: App;
  let env: Record<string, string>;

  before(async () => {
    queue = fakeQueue();
    policy = fakePolicy();
    await queue.start();
    await policy.start();
    app = await startAdmin(queue.address, policy.address);
    env = { TERN_ADMIN_ADDR: `127.0.0.1:${app.grpcPort}`, TERN_ADMIN_TOKEN: TOKENS.alice };
    queue.responses.getMessage = (req: { queueId: string }) => (req.queueId === message.queueId ? { message } : {});
    queue.responses.listMessages = {
      messages: [
        { queueId: 'QX7ABC', sender: 'alice@sender.test', size: 2048, createdAt: T0, recipientCount: 2, recipients: message.recipients.map((r) => ({ address: r.address, state: r.state })) },
        { queueId: 'QY8DEF', sender: '', size: 512, createdAt: new Date(Date.now() - 90_000), recipientCount: 1, recipients: [{ address: 'x@other.test', state: RecipientState.RECIPIENT_STATE_HELD }] },
      ],
      nextPageToken: 'CURSOR2',
    };
  });

  after(async () => {
    await app?.stop();
    await queue?.stop();
    await policy?.stop();
    fs.rmSync(EMPTY_DIR, { recursive: true, force: true });
  });

  describe('message', () => {
    it('show --json prints the message as JSON', async () => {
      const r = await tern(['message', 'show', 'QX7ABC', '--json'], env);
      assert.equal(r.code, 0, r.stderr);
      const m = JSON.parse(r.stdout);
      assert.equal(m.queueId, 'QX7ABC');
      assert.equal(m.envelope.sender, 'alice@sender.test');
      assert.equal(m.recipients[0].state, 'RECIPIENT_STATE_DEFERRED');
      assert.equal(m.recipients[0].attempts[0].reply.code, 451);
      assert.equal(m.createdAt, T0.toISOString());
      assert.equal(queue.last('getMessage')!.request.queueId, 'QX7ABC');
    });

    it('show prints envelope, recipients, attempts and operator events', async () => {
      const r = await tern(['message', 'show', 'QX7ABC'], env);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /^Queue ID: +QX7ABC$/m);
      assert.match(r.stdout, /^Sender: +<alice@sender\.test>$/m);
      assert.match(r.stdout, /^Client: +client\.example \[127\.0\.0\.2\]$/m);
      assert.match(r.stdout, /^RECIPIENT +STATE +DESTINATION +ATTEMPTS +NEXT ATTEMPT +LAST REPLY$/m);
      assert.match(r.stdout, /^bob@example\.test +deferred +example\.test +1 +in [45]m +451 4\.3\.0 try later$/m);
      assert.match(r.stdout, /^carol@example\.test +delivered/m);
      assert.match(r.stdout, /mx\.example\.test \[127\.0\.0\.9\]/);
      assert.match(r.stdout, /^Operator events$/m);
      assert.match(r.stdout, /alice +hold +checking/);
    });

    it('show of an unknown message exits 5 with the reason', async () => {
      queue.errors.getMessage = { code: grpc.status.NOT_FOUND, details: 'message NOPE not found' };
      try {
        const r = await tern(['message', 'show', 'NOPE'], env);
        assert.equal(r.code, 5);
        assert.equal(r.stderr, 'tern: message NOPE not found (NOT_FOUND)\n');
        assert.equal(r.stdout, '');
      } finally {
        delete queue.errors.getMessage;
      }
    });

    it('download writes the raw message to a file and to stdout', async () => {
      queue.body = [Buffer.from('Subject: hi\r\n\r\n'), Buffer.from('hello\r\n')];
      const file = path.join(EMPTY_DIR, 'm.eml');
      const r = await tern(['message', 'download', 'QX7ABC', '-o', file], env);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(fs.readFileSync(file, 'utf8'), 'Subject: hi\r\n\r\nhello\r\n');
      const s = await tern(['message', 'download', 'QX7ABC'], env);
      assert.equal(s.stdout, 'Subject: hi\r\n\r\nhello\r\n');
    });
  });

  describe('queue', () => {
    it('ls prints a table and maps the filter options', async () => {
      const r = await tern(['queue', 'ls', '--domain', 'Example.test', '--state', 'deferred,held', '--older-than', '1h', '--limit', '20'], env);
      assert.equal(r.code, 0, r.stderr);
      const lines = r.stdout.split('\n');
      assert.match(lines[0]!, /^QUEUE ID +AGE +SIZE +SENDER +RECIPIENTS +STATE$/);
      assert.match(lines[1]!, /^QX7ABC +2h +2\.0 KiB +alice@sender\.test +bob@example\.test \(\+1\) +1 deferred, 1 delivered$/);
      assert.match(lines[2]!, /^QY8DEF +1m +512 B +<> +x@other\.test +1 held$/);
      assert.match(r.stdout, /2 messages, newest first; more with --page-token CURSOR2/);
      const req = queue.last('listMessages')!.request as { filter: Record<string, unknown>; pageSize: number };
      assert.equal(req.pageSize, 20);
      assert.equal(req.filter.domain, 'example.test');
      assert.deepEqual(req.filter.states, [RecipientState.RECIPIENT_STATE_DEFERRED, RecipientState.RECIPIENT_STATE_HELD]);
      assert.equal(req.filter.minAgeSeconds, 3600);
    });

    it('ls --json prints the response with the next page token', async () => {
      const r = await tern(['queue', 'ls', '--json', '--page-token', 'CURSOR1'], env);
      assert.equal(r.code, 0, r.stderr);
      const res = JSON.parse(r.stdout);
      assert.equal(res.messages.length, 2);
      assert.equal(res.nextPageToken, 'CURSOR2');
      assert.equal(queue.last('listMessages')!.request.pageToken, 'CURSOR1');
      const req = queue.last('listMessages')!.request as { filter: { states: number[] } };
      assert.deepEqual(
        req.filter.states,
        [RecipientState.RECIPIENT_STATE_QUEUED, RecipientState.RECIPIENT_STATE_INFLIGHT, RecipientState.RECIPIENT_STATE_DEFERRED, RecipientState.RECIPIENT_STATE_HELD],
        'without --state: the recipients not yet final',
      );
    });

    it('summary prints destinations by state', async () => {
      queue.responses.queueSummary = {
        rows: [
          { destination: 'example.test', state: RecipientState.RECIPIENT_STATE_DEFERRED, count: 7, oldest: T0, lastError: '451 4.3.0 try later' },
          { destination: 'example.test', state: RecipientState.RECIPIENT_STATE_QUEUED, count: 2, oldest: T0 },
          { destination: 'other.test', state: RecipientState.RECIPIENT_STATE_QUEUED, count: 1 },
        ],
      };
      const r = await tern(['queue', 'summary'], env);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /^DESTINATION +TOTAL +QUEUED +DEFERRED +OLDEST +LAST ERROR$/m);
      assert.match(r.stdout, /^example\.test +9 +2 +7 +2h +451 4\.3\.0 try later$/m);
      assert.match(r.stdout, /^TOTAL +10 +3 +7$/m);
    });

    it('hold by filter with --dry-run sends the filter, the reason, and the operator from the token', async () => {
      queue.responses.applyAction = (req: { dryRun: boolean }) => ({ messages: 4, recipients: 6, dryRun: req.dryRun });
      const r = await tern(['queue', 'hold', '--domain', 'example.test', '--dry-run', '--reason', 'abuse'], env);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout, 'Dry run: would hold 4 messages (6 recipients). Nothing changed.\n');
      const req = queue.last('applyAction')!.request as { action: number; filter: { domain: string }; dryRun: boolean; operator: string; reason: string; queueId: string };
      assert.equal(req.action, QueueAction.QUEUE_ACTION_HOLD);
      assert.equal(req.filter.domain, 'example.test');
      assert.equal(req.queueId, '');
      assert.equal(req.dryRun, true);
      assert.equal(req.reason, 'abuse');
      assert.equal(req.operator, 'alice');
    });

    it('bounce one message by ID', async () => {
      const r = await tern(['queue', 'bounce', 'QX7ABC', '--reason', 'spam', '--json'], env);
      assert.equal(r.code, 0, r.stderr);
      assert.deepEqual(JSON.parse(r.stdout), { action: 'bounce', queueId: 'QX7ABC', messages: 4, recipients: 6, dryRun: false });
      const req = queue.last('applyAction')!.request as { action: number; queueId: string };
      assert.equal(req.action, QueueAction.QUEUE_ACTION_BOUNCE);
      assert.equal(req.queueId, 'QX7ABC');
    });

    it('refuses an action without a target, and an ID with a filter (exit 2, nothing sent)', async () => {
      const before = queue.calls.length;
      const none = await tern(['queue', 'delete'], env);
      assert.equal(none.code, 2);
      assert.match(none.stderr, /^tern: which messages\? give a queue ID, filter options .* or --all\n$/);
      const both = await tern(['queue', 'delete', 'QX7ABC', '--sender', 'a@b.test'], env);
      assert.equal(both.code, 2);
      assert.equal(queue.calls.length, before);
    });
  });

  describe('destinations, routes and policy data', () => {
    it('suspends a destination with a reason', async () => {
      queue.responses.suspendDestination = (req: { destination: string; reason: string }) => ({ destination: { name: req.destination, suspended: true, suspendedReason: req.reason } });
      const r = await tern(['destination', 'suspend', 'example.test', '--reason', 'maintenance'], env);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout, 'Suspended example.test.\n');
      assert.equal(queue.last('suspendDestination')!.request.operator, 'alice');
    });

    it('sets a smart-host route', async () => {
      queue.responses.putRoute = (req: { route: unknown }) => ({ route: req.route });
      const r = await tern(['route', 'set', '*', '--kind', 'smarthost', '--target', 'relay.example:587', '--tls-policy', 'verify'], env);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout, 'Route for *: smarthost via relay.example:587, TLS verify.\n');
      const route = queue.last('putRoute')!.request.route as { kind: number; target: string };
      assert.equal(route.kind, RouteKind.ROUTE_KIND_SMARTHOST);
      assert.equal(route.target, 'relay.example:587');
    });

    it('adds a domain and lists domains', async () => {
      policy.responses.putDomain = (req: { domain: unknown }) => ({ domain: req.domain });
      const add = await tern(['domain', 'add', 'local.test', '--kind', 'local', '--catch-all', 'bucket@local.test'], env);
      assert.equal(add.code, 0, add.stderr);
      const d = policy.last('putDomain')!.request as { domain: { kind: number; catchAll: string }; operator: string };
      assert.equal(d.domain.kind, DomainKind.DOMAIN_KIND_LOCAL);
      assert.equal(d.domain.catchAll, 'bucket@local.test');
      assert.equal(d.operator, 'alice');
      policy.responses.listDomains = { domains: [{ name: 'local.test', kind: DomainKind.DOMAIN_KIND_LOCAL, catchAll: 'bucket@local.test' }] };
      const ls = await tern(['domain', 'ls'], env);
      assert.match(ls.stdout, /^DOMAIN +KIND +CATCH-ALL +MAX SIZE +RECIPIENTS\nlocal\.test +local +bucket@local\.test +default +-\n$/);
    });

    it('adds a user with the password from stdin', async () => {
      policy.responses.putUser = (req: { user: unknown }) => ({ user: req.user });
      const r = await tern(['user', 'add', 'sub@local.test', '--password-stdin', '--allowed-sender', '@local.test', '--may-relay'], env, { input: 's3cret pass\n' });
      assert.equal(r.code, 0, r.stderr);
      const req = policy.last('putUser')!.request as { password: string; user: { allowedSenders: string[]; mayRelay: boolean; enabled: boolean } };
      assert.equal(req.password, 's3cret pass');
      assert.deepEqual(req.user.allowedSenders, ['@local.test']);
      assert.equal(req.user.mayRelay, true);
      assert.equal(req.user.enabled, true);
    });

    it('refuses to ask for a password without a terminal', async () => {
      const r = await tern(['user', 'add', 'sub@local.test'], env);
      assert.equal(r.code, 2);
      assert.match(r.stderr, /--password-stdin/);
    });

    it('passes the owner validation message through (exit 1)', async () => {
      policy.errors.putMailbox = { code: grpc.status.INVALID_ARGUMENT, details: 'mailbox.address: "nope" is not a valid address' };
      try {
        const r = await tern(['mailbox', 'add', 'nope'], env);
        assert.equal(r.code, 1);
        assert.equal(r.stderr, 'tern: the policy service refused the request: mailbox.address: "nope" is not a valid address (INVALID_ARGUMENT)\n');
      } finally {
        delete policy.errors.putMailbox;
      }
    });

    it('reports deleting what does not exist (exit 5)', async () => {
      policy.responses.deleteAlias = { deleted: false };
      const r = await tern(['alias', 'rm', 'ghost@local.test'], env);
      assert.equal(r.code, 5);
      assert.equal(r.stderr, 'tern: no alias ghost@local.test: nothing deleted (tern alias ls lists them)\n');
    });
  });

  describe('errors', () => {
    it('says so when the admin API cannot be reached (exit 3)', async () => {
      const port = await deadPort();
      const r = await tern(['queue', 'ls'], { ...env, TERN_ADMIN_ADDR: `127.0.0.1:${port}` });
      assert.equal(r.code, 3);
      assert.equal(
        r.stderr,
        `tern: cannot reach the admin API at 127.0.0.1:${port} (connection refused). Is the platform running? Start it with 'npm start', or set TERN_ADMIN_ADDR.\n`,
      );
      assert.equal(r.stdout, '');
    });

    it('says so when the token is refused (exit 4)', async () => {
      const r = await tern(['message', 'show', 'QX7ABC'], { ...env, TERN_ADMIN_TOKEN: 'wrong' });
      assert.equal(r.code, 4);
      assert.equal(r.stderr, 'tern: the admin API refused the token (UNAUTHENTICATED). Set TERN_ADMIN_TOKEN (the token came from TERN_ADMIN_TOKEN).\n');
    });

    it('says how to give a token when none was given (exit 4)', async () => {
      const r = await tern(['queue', 'ls'], { TERN_ADMIN_ADDR: env.TERN_ADMIN_ADDR! });
      assert.equal(r.code, 4);
      assert.equal(r.stderr, 'tern: the admin API needs a token (UNAUTHENTICATED). Set TERN_ADMIN_TOKEN (or TERN_ADMIN_TOKEN_FILE), or pass --token.\n');
    });

    it('reads the token from a file, and from .tern/admin-token of a local platform', async () => {
      const file = path.join(EMPTY_DIR, 'token');
      fs.writeFileSync(file, `${TOKENS.bob}\n`);
      const r = await tern(['queue', 'summary'], { TERN_ADMIN_ADDR: env.TERN_ADMIN_ADDR!, TERN_ADMIN_TOKEN_FILE: file });
      assert.equal(r.code, 0, r.stderr);
      const repo = path.join(EMPTY_DIR, 'repo');
      fs.mkdirSync(path.join(repo, '.tern'), { recursive: true });
      fs.mkdirSync(path.join(repo, 'sub'), { recursive: true });
      fs.writeFileSync(path.join(repo, '.tern', 'admin-token'), `${TOKENS.bob}\n`);
      const local = await tern(['destination', 'resume', 'example.test'], { TERN_ADMIN_ADDR: env.TERN_ADMIN_ADDR! }, { cwd: path.join(repo, 'sub') });
      assert.equal(local.code, 0, local.stderr);
      assert.equal(queue.last('resumeDestination')!.request.operator, 'bob');
    });

    it('names the service behind the admin API that is down (exit 3)', async () => {
      const port = await deadPort();
      const lonely = await startAdmin(`127.0.0.1:${port}`, policy.address);
      try {
        const r = await tern(['queue', 'ls'], { ...env, TERN_ADMIN_ADDR: `127.0.0.1:${lonely.grpcPort}` });
        assert.equal(r.code, 3);
        assert.equal(
          r.stderr,
          `tern: the admin API at 127.0.0.1:${lonely.grpcPort} answered, but the queue service at 127.0.0.1:${port} is unreachable (connection refused) (UNAVAILABLE). Check that the queue service is running.\n`,
        );
      } finally {
        await lonely.stop();
      }
    });

    it('speaks mTLS with --ca-file, --cert-file and --key-file', async () => {
      const pki = makePki('ops-bot');
      const secure = await startAdmin(queue.address, policy.address, {
        TERN_GRPC_TLS_CERT_FILE: pki.serverCert,
        TERN_GRPC_TLS_KEY_FILE: pki.serverKey,
        TERN_GRPC_TLS_CA_FILE: pki.ca,
      });
      try {
        const server = `localhost:${secure.grpcPort}`;
        const ok = await tern(['--server', server, '--ca-file', pki.ca, '--cert-file', pki.clientCert, '--key-file', pki.clientKey, 'queue', 'summary', '--json'], {
          TERN_ADMIN_TOKEN: TOKENS.alice,
        });
        assert.equal(ok.code, 0, ok.stderr);
        const noCert = await tern(['queue', 'summary'], { TERN_ADMIN_ADDR: server, TERN_ADMIN_CA_FILE: pki.ca, TERN_ADMIN_TOKEN: TOKENS.alice });
        assert.equal(noCert.code, 3);
        assert.equal(
          noCert.stderr,
          `tern: cannot reach the admin API at ${server} (the server requires a client certificate). Pass --cert-file and --key-file (TERN_ADMIN_CERT_FILE, TERN_ADMIN_KEY_FILE).\n`,
        );
        const plain = await tern(['queue', 'summary'], { TERN_ADMIN_ADDR: server, TERN_ADMIN_TOKEN: TOKENS.alice });
        assert.equal(plain.code, 3);
        assert.match(plain.stderr, /^tern: cannot reach the admin API at .*If it uses TLS, pass --tls or --ca-file\.\n$/);
        const untrusted = await tern(['queue', 'summary'], { TERN_ADMIN_ADDR: server, TERN_ADMIN_TLS: '1', TERN_ADMIN_TOKEN: TOKENS.alice });
        assert.equal(untrusted.code, 3);
        assert.match(untrusted.stderr, /\(the server certificate is not trusted\)\. Pass --ca-file with the CA that signed it/);
      } finally {
        await secure.stop();
        fs.rmSync(pki.dir, { recursive: true, force: true });
      }
    });

    it('exits 2 on a usage error', async () => {
      const r = await tern(['queue', 'ls', '--state', 'bogus'], env);
      assert.equal(r.code, 2);
      assert.match(r.stderr, /^tern: --state: "bogus" is not a state/);
      const u = await tern(['frobnicate'], env);
      assert.equal(u.code, 2);
      assert.match(u.stderr, /^tern: unknown command 'frobnicate'/);
    });

    it('prints help with exit 0', async () => {
      const r = await tern(['--help'], env);
      assert.equal(r.code, 0);
      assert.match(r.stdout, /Usage: tern/);
      for (const c of ['message', 'queue', 'destination', 'route', 'domain', 'mailbox', 'alias', 'user']) assert.match(r.stdout, new RegExp(`^  ${c} `, 'm'));
    });
  });
});
