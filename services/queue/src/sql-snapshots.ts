// The final text of every named statement of the message path (db.ts
// `statement`) as the files of services/queue/sql, one per name: written by
// `npm run sql:snapshot`, compared with the code by
// test/sql-snapshots.test.ts, so that a change to a statement is reviewed as
// the SQL Postgres receives. No database is needed: the texts are built from
// the code alone.
import fs from 'node:fs';
import path from 'node:path';
import './app'; // every module of the service, and with them every statement
import { loadConfig } from './config';
import { registeredStatements } from './db';
import { destinationLimits } from './destination';

export const SQL_DIR = path.resolve(__dirname, '../sql');

/** What sql/<name>.sql holds for each statement, by name. */
export function statementSnapshots(): Map<string, string> {
  // The limits are pasted into some texts: the defaults' (placeholders for the required addresses, never used).
  const limits = destinationLimits(loadConfig({ TERN_DATABASE_URL: 'postgres://snapshot/none', TERN_NATS_URL: 'nats://snapshot' }));
  const out = new Map<string, string>();
  for (const s of registeredStatements(limits).sort((a, b) => a.name.localeCompare(b.name))) {
    const header = [`-- ${s.name}: generated from services/queue/src by \`npm run sql:snapshot\`; do not edit.`];
    if (s.usesLimits) header.push('-- The destination limits in it are the defaults (TERN_QUEUE_DEST_* unset).');
    out.set(s.name, `${header.join('\n')}\n${s.text}\n`);
  }
  return out;
}

/** The statement names that have a file in sql/. */
export function snapshotFiles(): string[] {
  return fs
    .readdirSync(SQL_DIR)
    .filter((f) => f.endsWith('.sql'))
    .map((f) => f.slice(0, -'.sql'.length))
    .sort();
}

/** Writes sql/<name>.sql for every statement and removes the files of statements that are gone; returns what changed. */
export function writeSnapshots(): { written: string[]; removed: string[] } {
  const snapshots = statementSnapshots();
  fs.mkdirSync(SQL_DIR, { recursive: true });
  const written: string[] = [];
  for (const [name, content] of snapshots) {
    const file = path.join(SQL_DIR, `${name}.sql`);
    if (fs.existsSync(file) && fs.readFileSync(file, 'utf8') === content) continue;
    fs.writeFileSync(file, content);
    written.push(name);
  }
  const removed = snapshotFiles().filter((name) => !snapshots.has(name));
  for (const name of removed) fs.unlinkSync(path.join(SQL_DIR, `${name}.sql`));
  return { written, removed };
}
