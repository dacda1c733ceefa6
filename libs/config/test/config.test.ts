import { test } from 'node:test';
import assert from 'node:assert/strict';
import { z, parseEnv, ConfigError, configProblems, hostPort, positiveInt, csv, bool } from '../src/index';

const schema = z.object({
  TERN_GRPC_LISTEN: hostPort('0.0.0.0:7003'),
  TERN_MAX: positiveInt(10),
  TERN_LIST: csv(['a']),
  TERN_FLAG: bool(false),
  TERN_DATABASE_URL: z.string().regex(/^postgres:\/\//, 'expected a postgres:// URL'),
});

test('defaults apply and values are parsed', () => {
  const c = parseEnv(schema, { TERN_DATABASE_URL: 'postgres://x', TERN_LIST: 'x, y,,', TERN_FLAG: 'true', TERN_GRPC_LISTEN: '[::1]:99' });
  assert.deepEqual(c.TERN_GRPC_LISTEN, { host: '::1', port: 99 });
  assert.equal(c.TERN_MAX, 10);
  assert.deepEqual(c.TERN_LIST, ['x', 'y']);
  assert.equal(c.TERN_FLAG, true);
});

test('an unset host:port variable gets its default parsed, not the raw string', () => {
  const c = parseEnv(schema, { TERN_DATABASE_URL: 'postgres://x' });
  assert.deepEqual(c.TERN_GRPC_LISTEN, { host: '0.0.0.0', port: 7003 });
});

test('a bad variable is reported by name with the value given', () => {
  assert.throws(
    () => parseEnv(schema, { TERN_DATABASE_URL: 'mysql://x', TERN_MAX: '-3', TERN_GRPC_LISTEN: 'nope' }),
    (err: unknown) => {
      assert.ok(err instanceof ConfigError);
      const vars = err.problems.map((p) => p.variable).sort();
      assert.deepEqual(vars, ['TERN_DATABASE_URL', 'TERN_GRPC_LISTEN', 'TERN_MAX']);
      assert.match(err.message, /TERN_DATABASE_URL: expected a postgres:\/\/ URL \(got "mysql:\/\/x"\)/);
      return true;
    },
  );
});

test('an empty string counts as unset', () => {
  assert.throws(() => parseEnv(schema, { TERN_DATABASE_URL: '' }), /TERN_DATABASE_URL: .*unset/);
});

test('configProblems: each problem as "VARIABLE: message", none for a good configuration, other errors thrown', () => {
  assert.deepEqual(configProblems(() => parseEnv(schema, { TERN_DATABASE_URL: 'postgres://x' })), []);
  assert.deepEqual(configProblems(() => parseEnv(schema, { TERN_DATABASE_URL: 'postgres://x', TERN_MAX: '0' })), [
    'TERN_MAX: Too small: expected number to be >0 (got "0")',
  ]);
  assert.throws(() => configProblems(() => JSON.parse('{')), SyntaxError);
});
