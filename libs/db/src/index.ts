// Postgres access shared by the services that own tables (policy, queue):
// a pool, a transaction helper, and the plain-SQL migration runner.
import fs from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import type { Logger } from '@tern/telemetry';

export { pg };
export type Pool = pg.Pool;
export type PoolClient = pg.PoolClient;

// int8 (bigint) and numeric come back as strings by default; our counts and
// sizes fit in a double, so parse them.
pg.types.setTypeParser(20, (v) => Number(v));

export interface PoolOptions {
  url: string;
  max?: number;
  applicationName: string;
  logger?: Logger;
  /** Bound on every statement, so no call waits forever on a stuck lock. */
  statementTimeoutMs?: number;
}

export function createPool(opts: PoolOptions): pg.Pool {
  const pool = new pg.Pool({
    connectionString: opts.url,
    max: opts.max ?? 10,
    application_name: opts.applicationName,
    connectionTimeoutMillis: 5_000,
    idleTimeoutMillis: 30_000,
    statement_timeout: opts.statementTimeoutMs ?? 30_000,
  });
  // An idle client losing its connection (Postgres restart) must not crash
  // the process; the pool replaces it on next use.
  pool.on('error', (err) => opts.logger?.warn({ err: err.message }, 'idle Postgres connection lost; the pool will reconnect'));
  return pool;
}

export async function withTransaction<T>(pool: pg.Pool, fn: (client: pg.PoolClient) => Promise<T>): Promise<T> {
  const client = await pool.connect();
  // While checked out, the pool's own 'error' listener is off: a connection
  // lost now (Postgres restart) is emitted on the client, and with no
  // listener that is an uncaught exception that kills the process. The loss
  // also fails the pending or next query, which rolls this transaction back
  // and reaches the caller; release() then discards the broken client.
  const onError = () => undefined;
  client.on('error', onError);
  try {
    await client.query('BEGIN');
    const result = await fn(client);
    await client.query('COMMIT');
    return result;
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw err;
  } finally {
    client.removeListener('error', onError);
    client.release();
  }
}

export interface MigrationSet {
  /** The owning service's schema; migrations are tracked in <schema>.schema_migrations. */
  schema: string;
  dir: string;
}

/**
 * Applies the pending *.sql files of each set in name order, each in its own
 * transaction. An advisory lock serialises concurrent runs (two hook Jobs).
 */
export async function migrate(url: string, sets: MigrationSet[], log: (line: string) => void = () => undefined): Promise<number> {
  const client = new pg.Client({ connectionString: url, application_name: 'tern-migrate' });
  await client.connect();
  let applied = 0;
  try {
    await client.query('SELECT pg_advisory_lock(hashtext($1))', ['tern-migrate']);
    for (const set of sets) {
      if (!/^[a-z_][a-z0-9_]*$/.test(set.schema)) throw new Error(`invalid schema name "${set.schema}"`);
      await client.query(`CREATE SCHEMA IF NOT EXISTS ${set.schema}`);
      await client.query(
        `CREATE TABLE IF NOT EXISTS ${set.schema}.schema_migrations (version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())`,
      );
      const done = new Set(
        (await client.query<{ version: string }>(`SELECT version FROM ${set.schema}.schema_migrations`)).rows.map((r) => r.version),
      );
      const files = fs.readdirSync(set.dir).filter((f) => f.endsWith('.sql')).sort();
      for (const file of files) {
        if (done.has(file)) continue;
        const sql = fs.readFileSync(path.join(set.dir, file), 'utf8');
        await client.query('BEGIN');
        try {
          await client.query(`SET LOCAL search_path TO ${set.schema}, public`);
          await client.query(sql);
          await client.query(`INSERT INTO ${set.schema}.schema_migrations (version) VALUES ($1)`, [file]);
          await client.query('COMMIT');
        } catch (err) {
          await client.query('ROLLBACK').catch(() => undefined);
          throw new Error(`migration ${set.schema}/${file} failed: ${(err as Error).message}`, { cause: err });
        }
        applied++;
        log(`applied ${set.schema}/${file}`);
      }
    }
  } finally {
    await client.query('SELECT pg_advisory_unlock(hashtext($1))', ['tern-migrate']).catch(() => undefined);
    await client.end();
  }
  return applied;
}
