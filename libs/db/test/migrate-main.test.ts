// The migrate command refuses a TERN_DATABASE_URL that is not a postgres://
// URL without echoing it: the value holds the database password.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';

test('a TERN_DATABASE_URL that is not postgres:// is refused, named, and its password not written', () => {
  const root = path.resolve(__dirname, '../../..');
  const r = spawnSync(path.join(root, 'node_modules/.bin/node'), ['--import', 'tsx', path.join(root, 'libs/db/src/migrate-main.ts')], {
    cwd: root,
    env: { PATH: process.env.PATH ?? '', TERN_DATABASE_URL: 'mysql://tern:S3cretPw@db:3306/tern' },
    encoding: 'utf8',
  });
  assert.equal(r.status, 78, r.stderr);
  assert.match(r.stderr, /TERN_DATABASE_URL must be a postgres:\/\/ URL/);
  assert.doesNotMatch(r.stdout + r.stderr, /S3cretPw/);
});
