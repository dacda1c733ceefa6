// `npm run sql:snapshot`: writes the final text of every named statement to
// services/queue/sql/<name>.sql (src/sql-snapshots.ts). Run it after changing
// a statement and commit the files with the change.
import { SQL_DIR, writeSnapshots } from '../src/sql-snapshots';

const { written, removed } = writeSnapshots();
for (const name of written) console.log(`wrote ${SQL_DIR}/${name}.sql`);
for (const name of removed) console.log(`removed ${SQL_DIR}/${name}.sql (no such statement)`);
if (!written.length && !removed.length) console.log(`${SQL_DIR}: up to date`);
