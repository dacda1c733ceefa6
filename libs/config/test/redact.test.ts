import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ConfigError, parseEnv, redactUrl, z } from '../src/index';

test('a URL password is masked; scheme, user, host, port, path and query stay', () => {
  assert.equal(redactUrl('postgres://tern:S3cret@pg.internal:5432/tern?sslmode=verify-full'), 'postgres://tern:***@pg.internal:5432/tern?sslmode=verify-full');
  assert.equal(redactUrl('nats://tern:S3cret@nats.nats.svc:4222'), 'nats://tern:***@nats.nats.svc:4222');
  assert.equal(redactUrl('tls://u:S3cret@[::1]:4222'), 'tls://u:***@[::1]:4222');
  assert.equal(redactUrl('postgresql://tern:@pg/tern'), 'postgresql://tern:***@pg/tern', 'even an empty one');
});

test('a NATS token (a user without password) is masked; a Postgres user alone is not a secret', () => {
  assert.equal(redactUrl('nats://s3cr3t-token@127.0.0.1:4222'), 'nats://***@127.0.0.1:4222');
  assert.equal(redactUrl('wss://s3cr3t-token@nats.example.com'), 'wss://***@nats.example.com');
  assert.equal(redactUrl('postgres://tern@pg/tern'), 'postgres://tern@pg/tern');
});

test('passwords with unencoded @ or / are masked whole; an @ after the host is not taken for one', () => {
  assert.equal(redactUrl('postgres://tern:p@ss@pg/tern'), 'postgres://tern:***@pg/tern');
  assert.equal(redactUrl('postgres://tern:pa/ss@pg/tern'), 'postgres://tern:***@pg/tern');
  assert.equal(redactUrl('postgres://tern:S3cret@pg/tern?application_name=a@b'), 'postgres://tern:***@pg/tern?application_name=a@b');
  assert.equal(redactUrl('postgres://pg/tern?options=a@b'), 'postgres://pg/tern?options=a@b', 'no user info at all');
});

test('password query parameters are masked', () => {
  assert.equal(redactUrl('postgres://pg/tern?user=tern&password=S3cret&sslmode=require'), 'postgres://pg/tern?user=tern&password=***&sslmode=require');
  assert.equal(redactUrl('postgres://tern@pg/tern?sslpassword=S3cret'), 'postgres://tern@pg/tern?sslpassword=***');
});

test('lists of servers and URLs inside text are each masked; text without a URL is unchanged', () => {
  assert.equal(redactUrl('nats://a:S3cret@n1:4222,nats://b:0ther@n2:4222'), 'nats://a:***@n1:4222,nats://b:***@n2:4222');
  assert.equal(
    redactUrl('cannot reach "postgres://tern:S3cret@pg:5432/tern" nor nats://tok@n1 (retrying)'),
    'cannot reach "postgres://tern:***@pg:5432/tern" nor nats://***@n1 (retrying)',
  );
  for (const plain of ['127.0.0.1:7003', 'nats://127.0.0.1:4222', 'https://example.com/a@b', 'alice@example.com', '']) assert.equal(redactUrl(plain), plain);
});

test('a configuration error quotes a bad URL without its password', () => {
  const schema = z.object({ TERN_DATABASE_URL: z.string().regex(/^postgres:\/\//, 'expected a postgres:// URL') });
  assert.throws(
    () => parseEnv(schema, { TERN_DATABASE_URL: 'mysql://tern:S3cret@db:3306/tern' }),
    (err: unknown) => {
      assert.ok(err instanceof ConfigError);
      assert.doesNotMatch(err.message, /S3cret/);
      assert.match(err.message, /TERN_DATABASE_URL: expected a postgres:\/\/ URL \(got "mysql:\/\/tern:\*\*\*@db:3306\/tern"\)/);
      assert.doesNotMatch(JSON.stringify(err.problems), /S3cret/);
      return true;
    },
  );
});
