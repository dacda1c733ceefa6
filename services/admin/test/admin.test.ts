// The admin service in-process in front of fake queue and policy services on
// loopback: authentication, forwarding with the operator stamped in, error
// mapping, health without credentials, token file reload.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ConfigError } from '@tern/config';
import { grpc } from '@tern/grpc';
import { AdminServiceService, DomainKind, QueueAction, ReadBodyRequest, RecipientState } from '@tern/proto';
import type { App } from '../src/app';
import { loadConfig } from '../src/config';
import { parseTokens } from '../src/tokens';
import { adminClient, deadPort, fakePolicy, fakeQueue, makePki, startAdmin, TOKENS, type AdminClient, type FakeOwner } from './fakes';

const code = (err: unknown) => (err as grpc.ServiceError).code;
const details = (err: unknown) => (err as grpc.ServiceError).details;

async function rejects(p: Promise<unknown>, expected: grpc.status, message?: RegExp | string): Promise<grpc.ServiceError> {
  try {
    await p;
  } catch (err) {
    assert.equal(code(err), expected, `expected ${grpc.status[expected]}, got ${grpc.status[code(err)]}: ${details(err)}`);
    if (typeof message === 'string') assert.equal(details(err), message);
    else if (message) assert.match(details(err), message);
    return err as grpc.ServiceError;
  }
  assert.fail(`expected ${grpc.status[expected]}, but the call succeeded`);
}

/** grpc.health.v1.Health/Check by hand: an empty request, `status` is field 1. */
function healthCheck(port: number, service = ''): Promise<number> {
  const client = new grpc.Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
  const req = service === '' ? Buffer.alloc(0) : Buffer.concat([Buffer.from([0x0a, service.length]), Buffer.from(service)]);
  return new Promise((resolve, reject) => {
    client.makeUnaryRequest(
      '/grpc.health.v1.Health/Check',
      (b: Buffer) => b,
      (b: Buffer) => b,
      req,
      new grpc.Metadata(),
      { deadline: Date.now() + 5000 },
      (err, res) => {
        client.close();
        if (err) return reject(err);
        resolve(res && res.length >= 2 && res[0] === 0x08 ? res[1]! : 0);
      },
    );
  });
}

function readBody(port: number, token: string | undefined, queueId: string): Promise<Buffer> {
  const Ctor = grpc.makeGenericClientConstructor(AdminServiceService, 'tern.v1.AdminService');
  const client = new Ctor(`127.0.0.1:${port}`, grpc.credentials.createInsecure()) as unknown as grpc.Client & {
    readBody(req: ReadBodyRequest, md: grpc.Metadata): grpc.ClientReadableStream<{ chunk: Buffer }>;
  };
  const md = new grpc.Metadata();
  if (token) md.set('authorization', `Bearer ${token}`);
  const chunks: Buffer[] = [];
  return new Promise((resolve, reject) => {
    const stream = client.readBody(ReadBodyRequest.fromPartial({ queueId }), md);
    stream.on('data', (m) => chunks.push(Buffer.from(m.chunk)));
    stream.on('error', (err) => {
      client.close();
      reject(err);
    });
    stream.on('end', () => {
      client.close();
      resolve(Buffer.concat(chunks));
    });
  });
}

describe('admin service', () => {
  let queue: FakeOwner;
  let policy: FakeOwner;
  let app: App;
  let alice: AdminClient;
  let anonymous: AdminClient;

  before(async () => {
    queue = fakeQueue();
    policy = fakePolicy();
    await queue.start();
    await policy.start();
    app = await startAdmin(queue.address, policy.address);
    alice = adminClient(app.grpcPort, TOKENS.alice);
    anonymous = adminClient(app.grpcPort);
  });

  after(async () => {
    alice?.close();
    anonymous?.close();
    await app?.stop();
    await queue?.stop();
    await policy?.stop();
  });

  describe('authentication', () => {
    it('refuses a call without a token with UNAUTHENTICATED, and forwards nothing', async () => {
      const before = queue.calls.length;
      await rejects(anonymous.getMessage({ queueId: 'Q1' }), grpc.status.UNAUTHENTICATED, 'missing or invalid bearer token');
      assert.equal(queue.calls.length, before);
    });

    it('refuses a wrong token', async () => {
      const mallory = adminClient(app.grpcPort, 'not-a-token');
      await rejects(mallory.listMessages({}), grpc.status.UNAUTHENTICATED, 'missing or invalid bearer token');
      mallory.close();
    });

    it('refuses a token that is a prefix of a real one, a non-Bearer scheme and an empty bearer', async () => {
      const prefix = adminClient(app.grpcPort, TOKENS.alice.slice(0, -1));
      await rejects(prefix.listDomains({}), grpc.status.UNAUTHENTICATED);
      prefix.close();
      const md = new grpc.Metadata();
      md.set('authorization', `Basic ${TOKENS.alice}`);
      await rejects(anonymous.listDomains({}, md), grpc.status.UNAUTHENTICATED);
      const empty = new grpc.Metadata();
      empty.set('authorization', 'Bearer ');
      await rejects(anonymous.listDomains({}, empty), grpc.status.UNAUTHENTICATED);
    });

    it('accepts the scheme case-insensitively', async () => {
      const md = new grpc.Metadata();
      md.set('authorization', `bearer ${TOKENS.bob}`);
      await anonymous.listDomains({}, md);
    });

    it('serves gRPC health without a token', async () => {
      assert.equal(await healthCheck(app.grpcPort), 1, 'SERVING');
      assert.equal(await healthCheck(app.grpcPort, 'tern.v1.AdminService'), 1, 'SERVING');
    });
  });

  describe('forwarding', () => {
    it('forwards GetMessage to queue and passes the response through', async () => {
      queue.responses.getMessage = (req: { queueId: string }) => ({
        message: {
          queueId: req.queueId,
          envelope: { sender: 'a@sender.test' },
          size: 1234,
          recipients: [{ address: 'b@example.test', state: RecipientState.RECIPIENT_STATE_DEFERRED, attemptCount: 2 }],
        },
      });
      const res = await alice.getMessage({ queueId: 'Q42', includeHeaders: true });
      assert.equal(res.message?.queueId, 'Q42');
      assert.equal(res.message?.size, 1234);
      assert.equal(res.message?.recipients[0]?.state, RecipientState.RECIPIENT_STATE_DEFERRED);
      const rec = queue.last('getMessage')!;
      assert.equal(rec.request.queueId, 'Q42');
      assert.equal(rec.request.includeHeaders, true);
      assert.deepEqual(rec.metadata.get('authorization'), [], 'the operator token is not passed on');
    });

    it('stamps the operator from the token on a mutating request; the client cannot spoof it', async () => {
      queue.responses.applyAction = { messages: 3, recipients: 5, dryRun: false };
      const md = new grpc.Metadata();
      md.set('authorization', `Bearer ${TOKENS.alice}`);
      md.set('x-tern-operator', 'mallory');
      const res = await anonymous.applyAction(
        { action: QueueAction.QUEUE_ACTION_HOLD, filter: { domain: 'example.test' }, operator: 'mallory', reason: 'abuse report' },
        md,
      );
      assert.deepEqual(res, { messages: 3, recipients: 5, dryRun: false });
      const rec = queue.last('applyAction')!;
      assert.equal(rec.request.operator, 'alice');
      assert.equal(rec.request.reason, 'abuse report');
      assert.equal(rec.request.action, QueueAction.QUEUE_ACTION_HOLD);
      assert.equal((rec.request.filter as { domain: string }).domain, 'example.test');
    });

    it('stamps the operator on policy changes too', async () => {
      const bob = adminClient(app.grpcPort, TOKENS.bob);
      policy.responses.putDomain = (req: { domain: unknown }) => ({ domain: req.domain });
      const res = await bob.putDomain({ domain: { name: 'local.test', kind: DomainKind.DOMAIN_KIND_LOCAL }, operator: 'alice' });
      assert.equal(res.domain?.name, 'local.test');
      assert.equal(policy.last('putDomain')!.request.operator, 'bob');
      await bob.putUser({ user: { username: 'u1', enabled: true }, password: 'secret-pw' });
      assert.equal(policy.last('putUser')!.request.operator, 'bob');
      assert.equal(policy.last('putUser')!.request.password, 'secret-pw');
      await bob.suspendDestination({ destination: 'example.test', reason: 'down' });
      assert.equal(queue.last('suspendDestination')!.request.operator, 'bob');
      bob.close();
    });

    it('does not add an operator to read-only calls', async () => {
      await alice.listMailboxes({ domain: 'local.test' });
      assert.equal(policy.last('listMailboxes')!.request.domain, 'local.test');
    });

    it('routes every RPC to its owner', async () => {
      const queueMethods = ['listMessages', 'queueSummary', 'resumeDestination', 'listDestinations', 'listRoutes', 'putRoute', 'deleteRoute'] as const;
      const policyMethods = ['listDomains', 'deleteDomain', 'putMailbox', 'deleteMailbox', 'listAliases', 'putAlias', 'deleteAlias', 'listUsers', 'deleteUser', 'suppress', 'listSuppressions', 'deleteSuppression'] as const;
      for (const m of queueMethods) {
        await (alice[m] as (r: object) => Promise<unknown>)({});
        assert.ok(queue.last(m), `${m} reached queue`);
      }
      for (const m of policyMethods) {
        await (alice[m] as (r: object) => Promise<unknown>)({});
        assert.ok(policy.last(m), `${m} reached policy`);
      }
    });

    it('streams ReadBody from queue', async () => {
      queue.body = [Buffer.from('Subject: hi\r\n\r\n'), Buffer.from('body line\r\n')];
      const body = await readBody(app.grpcPort, TOKENS.alice, 'Q1');
      assert.equal(body.toString(), 'Subject: hi\r\n\r\nbody line\r\n');
      assert.equal(queue.last('readBody')!.request.queueId, 'Q1');
      await rejects(readBody(app.grpcPort, undefined, 'Q1'), grpc.status.UNAUTHENTICATED);
    });
  });

  describe('errors', () => {
    it('passes INVALID_ARGUMENT and NOT_FOUND through with the owner message', async () => {
      policy.errors.putDomain = { code: grpc.status.INVALID_ARGUMENT, details: 'domain.name: "ex ample" is not a valid domain name' };
      const err = await rejects(alice.putDomain({ domain: { name: 'ex ample' } }), grpc.status.INVALID_ARGUMENT, 'domain.name: "ex ample" is not a valid domain name');
      assert.deepEqual(err.metadata.get('tern-owner'), ['policy']);
      delete policy.errors.putDomain;
      queue.errors.getMessage = { code: grpc.status.NOT_FOUND, details: 'message NOPE not found' };
      await rejects(alice.getMessage({ queueId: 'NOPE' }), grpc.status.NOT_FOUND, 'message NOPE not found');
      delete queue.errors.getMessage;
    });

    it('names the owner of an internal error', async () => {
      queue.errors.queueSummary = { code: grpc.status.INTERNAL, details: 'boom' };
      await rejects(alice.queueSummary({}), grpc.status.INTERNAL, `the queue service at ${queue.address}: boom`);
      delete queue.errors.queueSummary;
    });

    it('answers UNAVAILABLE naming the owner and its address when the owner is down', async () => {
      const port = await deadPort();
      const lonely = await startAdmin(`127.0.0.1:${port}`, policy.address);
      const c = adminClient(lonely.grpcPort, TOKENS.alice);
      try {
        const err = await rejects(c.getMessage({ queueId: 'Q1' }), grpc.status.UNAVAILABLE);
        assert.match(err.details, new RegExp(`queue service at 127\\.0\\.0\\.1:${port} is unreachable \\(connection refused\\)`));
        assert.deepEqual(err.metadata.get('tern-owner'), ['queue']);
        await rejects(readBody(lonely.grpcPort, TOKENS.alice, 'Q1'), grpc.status.UNAVAILABLE, /queue service at .* is unreachable/);
        // The other owner is still served.
        await c.listDomains({});
      } finally {
        c.close();
        await lonely.stop();
      }
    });
  });

  describe('tokens file', () => {
    it('is re-read when it changes', async () => {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-admin-'));
      const file = path.join(dir, 'tokens');
      fs.writeFileSync(file, '# operators\ncarol:carol-token-1\n');
      const a = await startAdmin(queue.address, policy.address, { TERN_ADMIN_TOKENS: '', TERN_ADMIN_TOKENS_FILE: file, TERN_ADMIN_TOKENS_RELOAD_MS: '50' });
      const old = adminClient(a.grpcPort, 'carol-token-1');
      const next = adminClient(a.grpcPort, 'carol-token-2');
      try {
        await old.listRoutes({});
        await rejects(next.listRoutes({}), grpc.status.UNAUTHENTICATED);
        fs.writeFileSync(file, 'carol:carol-token-2\ndave:dave-token\n');
        const deadline = Date.now() + 5000;
        while (a.tokens.lookup('carol-token-2') === undefined && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
        await next.putRoute({ route: { domain: 'example.test' } });
        assert.equal(queue.last('putRoute')!.request.operator, 'carol');
        await rejects(old.listRoutes({}), grpc.status.UNAUTHENTICATED);
        // A broken file keeps the tokens we have.
        fs.writeFileSync(file, 'this line has no colon\n');
        await new Promise((r) => setTimeout(r, 300));
        await next.listRoutes({});
      } finally {
        old.close();
        next.close();
        await a.stop();
        fs.rmSync(dir, { recursive: true, force: true });
      }
    });
  });

  describe('mTLS', () => {
    it('requires a client certificate and, with certificate auth, takes the operator from its CN', async () => {
      const pki = makePki('ops-bot');
      const a = await startAdmin(queue.address, policy.address, {
        TERN_GRPC_TLS_CERT_FILE: pki.serverCert,
        TERN_GRPC_TLS_KEY_FILE: pki.serverKey,
        TERN_GRPC_TLS_CA_FILE: pki.ca,
        TERN_ADMIN_CERT_AUTH: 'true',
      });
      const ca = fs.readFileSync(pki.ca);
      const withCert = grpc.credentials.createSsl(ca, fs.readFileSync(pki.clientKey), fs.readFileSync(pki.clientCert));
      const certOnly = adminClient(a.grpcPort, undefined, withCert, 'localhost');
      const certAndBadToken = adminClient(a.grpcPort, 'wrong', withCert, 'localhost');
      const certAndToken = adminClient(a.grpcPort, TOKENS.bob, withCert, 'localhost');
      const noCert = adminClient(a.grpcPort, TOKENS.alice, grpc.credentials.createSsl(ca), 'localhost');
      try {
        await certOnly.resumeDestination({ destination: 'example.test' });
        assert.equal(queue.last('resumeDestination')!.request.operator, 'cert:ops-bot');
        await certAndToken.resumeDestination({ destination: 'example.test' });
        assert.equal(queue.last('resumeDestination')!.request.operator, 'bob', 'a token names the operator when both are given');
        await rejects(certAndBadToken.listRoutes({}), grpc.status.UNAUTHENTICATED, 'missing or invalid bearer token'); // a wrong token is not rescued by the certificate
        await assert.rejects(noCert.listRoutes({}), (err: unknown) => code(err) === grpc.status.UNAVAILABLE);
      } finally {
        for (const c of [certOnly, certAndBadToken, certAndToken, noCert]) c.close();
        await a.stop();
        fs.rmSync(pki.dir, { recursive: true, force: true });
      }
    });
  });

  describe('configuration', () => {
    const base = { TERN_QUEUE_ADDR: '127.0.0.1:7003', TERN_POLICY_ADDR: '127.0.0.1:7002' };

    it('refuses to start without tokens, naming both variables', () => {
      assert.throws(
        () => loadConfig(base),
        (err: unknown) => err instanceof ConfigError && /TERN_ADMIN_TOKENS_FILE/.test(err.message) && /TERN_ADMIN_TOKENS \(/.test(err.message),
      );
    });

    it('refuses a malformed TERN_ADMIN_TOKENS and an unreadable tokens file', () => {
      assert.throws(() => loadConfig({ ...base, TERN_ADMIN_TOKENS: 'justatoken' }), /TERN_ADMIN_TOKENS: entry 1: expected name:token/);
      assert.throws(() => loadConfig({ ...base, TERN_ADMIN_TOKENS_FILE: '/nonexistent/tokens' }), /TERN_ADMIN_TOKENS_FILE: cannot read \/nonexistent\/tokens: ENOENT/);
    });

    it('requires the owner addresses', () => {
      assert.throws(() => loadConfig({ TERN_ADMIN_TOKENS: 'a:b' }), /TERN_QUEUE_ADDR[\s\S]*TERN_POLICY_ADDR/);
    });

    it('parses token lists and refuses duplicates', () => {
      assert.deepEqual(parseTokens(' a:x , b:y ', 'comma'), [
        { name: 'a', token: 'x', role: 'admin' },
        { name: 'b', token: 'y', role: 'admin' },
      ]);
      assert.deepEqual(parseTokens('ro:t1:viewer\nops:t:2:operator\nroot:t3:admin\nold:a:b:C1', 'line'), [
        { name: 'ro', token: 't1', role: 'viewer' },
        { name: 'ops', token: 't:2', role: 'operator' },
        { name: 'root', token: 't3', role: 'admin' },
        { name: 'old', token: 'a:b:C1', role: 'admin' },
      ]);
      assert.throws(() => parseTokens('ro:t1:reader', 'line'), /line 1: role "reader" of "ro" is not one of viewer, operator, admin/);
      assert.throws(() => parseTokens('a:x\nb:x', 'line'), /line 2: "b" has the same token as "a"/);
    });
  });
});
