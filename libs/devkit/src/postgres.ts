// Test databases: a uniquely named database on the provisioned Postgres,
// dropped by its handle.
import crypto from 'node:crypto';
import pg from 'pg';
import { sanitize } from './paths';

export interface TestDatabase {
  name: string;
  /** URL of the new database (same credentials as the admin URL). */
  url: string;
  adminUrl: string;
  /** Drops the database (terminating its connections). Idempotent. */
  drop(): Promise<void>;
}

export const DEFAULT_TEST_PG_URL = 'postgres://tern:tern@127.0.0.1:5432/postgres';

export function testPgAdminUrl(): string {
  return process.env.TERN_TEST_PG_URL || DEFAULT_TEST_PG_URL;
}

/**
 * Creates a uniquely named database on the provisioned Postgres
 * (TERN_TEST_PG_URL, default postgres://tern:tern@127.0.0.1:5432/postgres).
 */
export async function createTestDatabase(opts: { prefix?: string; adminUrl?: string } = {}): Promise<TestDatabase> {
  const adminUrl = opts.adminUrl ?? testPgAdminUrl();
  const prefix = sanitize(opts.prefix ?? 'tern_test').toLowerCase().replace(/[^a-z0-9_]/g, '_').slice(0, 40);
  const name = `${prefix}_${crypto.randomBytes(6).toString('hex')}`;
  const admin = new pg.Client({ connectionString: adminUrl, connectionTimeoutMillis: 5000 });
  try {
    await admin.connect();
  } catch (err) {
    throw new Error(
      `@tern/devkit: cannot connect to Postgres at ${adminUrl.replace(/:[^:@/]*@/, ':***@')} (${(err as Error).message}); run: bash scripts/provision.sh`,
      { cause: err },
    );
  }
  try {
    await admin.query(`CREATE DATABASE "${name}"`);
  } finally {
    await admin.end();
  }
  const u = new URL(adminUrl);
  u.pathname = `/${name}`;
  let dropped = false;
  return {
    name,
    url: u.toString(),
    adminUrl,
    async drop() {
      if (dropped) return;
      dropped = true;
      const c = new pg.Client({ connectionString: adminUrl, connectionTimeoutMillis: 5000 });
      await c.connect();
      try {
        await c.query(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
      } finally {
        await c.end();
      }
    },
  };
}
