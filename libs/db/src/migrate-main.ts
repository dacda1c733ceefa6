// The `migrate` command: applies every owning service's migrations, once per
// release (a Helm hook Job, the compose `migrate` step, `npm start`).
// Usage: TERN_DATABASE_URL=postgres://... node libs/db/dist/migrate.js
import path from 'node:path';
import { migrate } from './index';

// Owners in dependency order. Each service keeps its SQL next to its code.
const OWNERS = ['policy', 'queue', 'webhooks'];

function repoRoot(): string {
  // Bundled: libs/db/dist/migrate.js; from source: libs/db/src/migrate-main.ts.
  return path.resolve(__dirname, '../../..');
}

async function main(): Promise<void> {
  const url = process.env.TERN_DATABASE_URL;
  if (!url || !/^postgres(ql)?:\/\//.test(url)) {
    // The value is not echoed: a URL holds the database password.
    process.stderr.write('tern-migrate: TERN_DATABASE_URL must be a postgres:// URL (got ' + (url ? 'a value that does not start with postgres://' : 'unset') + ')\n');
    process.exit(78);
  }
  const root = process.env.TERN_MIGRATIONS_ROOT ?? repoRoot();
  const sets = OWNERS.map((owner) => ({ schema: owner, dir: path.join(root, 'services', owner, 'migrations') }));
  const applied = await migrate(url, sets, (line) => process.stdout.write(`tern-migrate: ${line}\n`));
  process.stdout.write(`tern-migrate: done, ${applied} migration(s) applied\n`);
}

main().catch((err: Error) => {
  process.stderr.write(`tern-migrate: ${err.message}\n`);
  process.exit(1);
});
