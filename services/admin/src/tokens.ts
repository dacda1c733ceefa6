// Operator tokens: `name:token[:role]` entries from TERN_ADMIN_TOKENS_FILE
// (one a line, re-read when the file changes) and TERN_ADMIN_TOKENS
// (comma-separated). The role (viewer, operator, admin) says what the token
// may do; an entry without one is admin, as every token was before roles.
// A presented token is compared with every known one in constant time.
import crypto from 'node:crypto';
import fs from 'node:fs';
import type { Logger } from '@tern/telemetry';
import { errorMessage } from '@tern/runtime';

/** What a token may do, each role including the ones before it. */
export const ROLES = ['viewer', 'operator', 'admin'] as const;
export type Role = (typeof ROLES)[number];

export function roleRank(role: Role): number {
  return ROLES.indexOf(role);
}

export function isRole(s: string): s is Role {
  return (ROLES as readonly string[]).includes(s);
}

export interface TokenEntry {
  name: string;
  token: string;
  role: Role;
}

/** Who a presented token (or client certificate) belongs to. */
export interface Caller {
  name: string;
  role: Role;
}

const NAME = /^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$/;

/**
 * Parses `name:token` entries separated by `separator` (newlines for the
 * file, commas for the variable). Blank entries and `#` comments are skipped.
 * Throws with the entry number and what is wrong (never the token itself).
 */
export function parseTokens(text: string, separator: 'line' | 'comma'): TokenEntry[] {
  const parts = separator === 'line' ? text.split(/\r?\n/) : text.split(',');
  const what = separator === 'line' ? 'line' : 'entry';
  const out: TokenEntry[] = [];
  const seen = new Map<string, string>();
  parts.forEach((raw, i) => {
    const entry = raw.trim();
    if (entry === '' || entry.startsWith('#')) return;
    const colon = entry.indexOf(':');
    if (colon <= 0 || colon === entry.length - 1) {
      throw new Error(`${what} ${i + 1}: expected name:token`);
    }
    const name = entry.slice(0, colon).trim();
    let token = entry.slice(colon + 1).trim();
    let role: Role = 'admin';
    const last = token.lastIndexOf(':');
    if (last > 0 && isRole(token.slice(last + 1).trim())) {
      role = token.slice(last + 1).trim() as Role;
      token = token.slice(0, last).trim();
    } else if (last > 0 && /^[a-z]+$/.test(token.slice(last + 1)) && token.slice(last + 1).length <= 10) {
      throw new Error(`${what} ${i + 1}: role "${token.slice(last + 1)}" of "${name}" is not one of ${ROLES.join(', ')}`);
    }
    if (!NAME.test(name)) throw new Error(`${what} ${i + 1}: operator name "${name}" must be letters, digits, . _ @ - (at most 64)`);
    if (/\s/.test(token)) throw new Error(`${what} ${i + 1}: the token of "${name}" contains whitespace`);
    const other = seen.get(token);
    if (other !== undefined) throw new Error(`${what} ${i + 1}: "${name}" has the same token as "${other}"`);
    seen.set(token, name);
    out.push({ name, token, role });
  });
  return out;
}

/** Reads and parses a tokens file; the error names the file. */
export function readTokensFile(file: string): TokenEntry[] {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new Error(`cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? errorMessage(err)}`, { cause: err });
  }
  try {
    return parseTokens(text, 'line');
  } catch (err) {
    throw new Error(`${file}: ${errorMessage(err)}`, { cause: err });
  }
}

const digest = (token: string) => crypto.createHash('sha256').update(token, 'utf8').digest();

interface Known {
  name: string;
  role: Role;
  digest: Buffer;
  source: 'file' | 'env';
}

export interface TokenStoreOptions {
  file?: string;
  inline: TokenEntry[];
  /** Poll interval for changes to `file`. */
  reloadMs: number;
  logger: Logger;
}

export class TokenStore {
  private known: Known[] = [];
  private fromFile: Known[] = [];
  private readonly fromEnv: Known[];
  private watching = false;

  constructor(private readonly opts: TokenStoreOptions) {
    this.fromEnv = opts.inline.map((e) => ({ name: e.name, role: e.role, digest: digest(e.token), source: 'env' as const }));
    this.known = this.fromEnv;
  }

  /** Loads the file (throws when it is unreadable or malformed) and starts watching it. */
  start(): void {
    if (this.opts.file) {
      this.setFile(readTokensFile(this.opts.file));
      // watchFile polls stat() through symlinks, so it sees Kubernetes secret
      // updates (an atomic swap of the ..data symlink) where fs.watch may not.
      fs.watchFile(this.opts.file, { interval: this.opts.reloadMs, persistent: false }, (cur, prev) => {
        if (cur.mtimeMs === prev.mtimeMs && cur.size === prev.size && cur.ino === prev.ino) return;
        this.reload();
      });
      this.watching = true;
    }
    this.opts.logger.info({ operators: this.names() }, 'admin tokens loaded');
  }

  stop(): void {
    if (this.watching && this.opts.file) fs.unwatchFile(this.opts.file);
    this.watching = false;
  }

  /** Re-reads the file; a broken file keeps the tokens we have. */
  reload(): void {
    if (!this.opts.file) return;
    try {
      this.setFile(readTokensFile(this.opts.file));
      this.opts.logger.info({ event: 'admin_tokens_reloaded', operators: this.names() }, 'admin tokens reloaded');
    } catch (err) {
      this.opts.logger.error({ event: 'admin_tokens_reload_failed', err: errorMessage(err) }, 'admin tokens file is invalid; keeping the previous tokens');
    }
  }

  /** The operator and role of `token`, or undefined. Every entry is compared, in constant time. */
  lookup(token: string): Caller | undefined {
    const d = digest(token);
    let found: Caller | undefined;
    for (const k of this.known) {
      if (crypto.timingSafeEqual(d, k.digest) && found === undefined) found = { name: k.name, role: k.role };
    }
    return found;
  }

  names(): string[] {
    return [...new Set(this.known.map((k) => k.name))].sort();
  }

  get size(): number {
    return this.known.length;
  }

  private setFile(entries: TokenEntry[]): void {
    this.fromFile = entries.map((e) => ({ name: e.name, role: e.role, digest: digest(e.token), source: 'file' as const }));
    this.known = [...this.fromFile, ...this.fromEnv];
  }
}
