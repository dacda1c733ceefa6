// The SQL of the message path's named statements, as the code builds it,
// against the files in services/queue/sql (written by `npm run sql:snapshot`):
// a statement changed without its file, a file without a statement or a
// statement without a file fails, naming the statement.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { SQL_DIR, snapshotFiles, statementSnapshots } from '../src/sql-snapshots';

const snapshots = statementSnapshots();
const REGENERATE = 'run `npm run sql:snapshot` in services/queue and commit sql/ with the change';

test('every named statement has a file in sql/ and every file a statement', () => {
  const files = new Set(snapshotFiles());
  const noFile = [...snapshots.keys()].filter((n) => !files.has(n));
  const noStatement = [...files].filter((n) => !snapshots.has(n));
  assert.deepEqual({ noFile, noStatement }, { noFile: [], noStatement: [] }, `statements without a file: ${noFile.join(', ') || 'none'}; files without a statement: ${noStatement.join(', ') || 'none'} (${REGENERATE})`);
});

test('the message path has its statements (the registry is filled)', () => {
  // A guard against a loader change that registers nothing, which would make the comparisons below vacuous.
  for (const name of ['tern_enq_one', 'tern_claim_due', 'tern_results_apply', 'tern_outbox_select']) assert.ok(snapshots.has(name), name);
});

for (const [name, code] of snapshots) {
  test(`${name}: the code's SQL is sql/${name}.sql`, (t) => {
    const file = path.join(SQL_DIR, `${name}.sql`);
    if (!fs.existsSync(file)) return t.skip(`no sql/${name}.sql (the test above fails)`);
    const text = fs.readFileSync(file, 'utf8');
    try {
      assert.equal(code, text);
    } catch (err) {
      // Its message is the diff (the code +, the file -), shown under the statement's name.
      throw new assert.AssertionError({ message: `${name}: the code's SQL differs from sql/${name}.sql (${REGENERATE}):\n${(err as Error).message}`, actual: code, expected: text, operator: 'strictEqual' });
    }
  });
}
