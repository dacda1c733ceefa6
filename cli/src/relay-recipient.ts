// `tern relay-recipient ...` and `tern verify ...`: the recipients of relay
// domains (policy keeps the list; a relay domain checks it with
// `tern domain add D --kind relay --recipients list`) and the cache of
// recipient verification callouts (`--recipients callout`).
import fs from 'node:fs';
import type { Command } from '@commander-js/extra-typings';
import { isGrpcError } from '@tern/grpc';
import {
  DeleteRelayRecipientsResponse,
  FlushVerifiedRecipientsResponse,
  ListRelayRecipientsResponse,
  ListVerifiedRecipientsResponse,
  PutRelayRecipientsResponse,
  VerifyResult,
  type RelayRecipient,
  type VerifiedRecipient,
} from '@tern/proto';
import type { AdminApi } from './client';
import { CliError, EXIT, fileProblem } from './errors';
import { json, table } from './format';
import { UsageError } from './requests';

interface Ctx {
  api: AdminApi;
  json: boolean;
  out(text: string): void;
  io: { stdin: NodeJS.ReadableStream };
}

type Run = <A extends unknown[]>(fn: (ctx: Ctx, ...args: A) => Promise<void>) => (...args: A) => Promise<void>;

/** Entries per call of an import (the API takes up to 10000). */
const BATCH = 5_000;

const when = (d: Date | undefined) => (d ? d.toISOString().replace(/\.\d+Z$/, 'Z') : '-');

export function formatRelayRecipients(rs: RelayRecipient[], next: string): string {
  if (!rs.length) return 'No relay recipients.\n';
  return table(['ADDRESS', 'ADDED', 'BY'], rs.map((r) => [r.address, when(r.createdAt), r.createdBy])) + (next ? `More: --after ${next}\n` : '');
}

export function formatVerified(rs: VerifiedRecipient[], next: string): string {
  if (!rs.length) return 'No verification results cached.\n';
  return (
    table(
      ['ADDRESS', 'RESULT', 'REPLY', 'HOST', 'CHECKED', 'UNTIL'],
      rs.map((r) => [
        r.address,
        r.result === VerifyResult.VERIFY_RESULT_OK ? 'ok' : 'reject',
        `${r.reply?.code ?? ''} ${r.reply?.enhanced ?? ''} ${r.reply?.text ?? ''}`.replace(/ +/g, ' ').trim().slice(0, 80),
        r.remoteHost || '-',
        when(r.checkedAt),
        when(r.expiresAt),
      ]),
    ) + (next ? `More: --after ${next}\n` : '')
  );
}

/**
 * The entries of an import file: one per line, "user@domain" or "@domain";
 * blank lines and "#" comments skipped; a Postfix map line ("user@domain OK")
 * gives its first field. Each entry keeps its line number for errors.
 */
export function parseImport(text: string): { address: string; line: number }[] {
  const out: { address: string; line: number }[] = [];
  text.split(/\r?\n/).forEach((raw, i) => {
    const s = raw.replace(/#.*$/, '').trim();
    if (!s) return;
    out.push({ address: s.split(/\s+/)[0]!, line: i + 1 });
  });
  return out;
}

async function readSource(file: string, stdin: NodeJS.ReadableStream): Promise<string> {
  if (file === '-') {
    const chunks: Buffer[] = [];
    for await (const c of stdin) chunks.push(Buffer.isBuffer(c) ? c : Buffer.from(c as string));
    return Buffer.concat(chunks).toString('utf8');
  }
  try {
    return fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new UsageError(`FILE: cannot read ${file} (${fileProblem(err)}): give the file to import, or - for standard input`);
  }
}

/** A refusal naming addresses[i] of a batch, told as the file's line. */
function atLine(err: unknown, file: string, batch: { address: string; line: number }[], nothing = 'nothing was imported'): unknown {
  if (!isGrpcError(err)) return err;
  const m = /addresses\[(\d+)\]: (.*)$/s.exec(err.details ?? '');
  const entry = m ? batch[Number(m[1])] : undefined;
  if (!m || !entry) return err;
  return new CliError(`${file}:${entry.line}: "${entry.address}": ${m[2]!.replace(/ \(INVALID_ARGUMENT\)$/, '')}; ${nothing} (fix the line and run it again)`, EXIT.FAILED);
}

/** Entries of one replace (policy's MAX_REPLACE): the whole list goes in one call, so in one transaction. */
const MAX_REPLACE = 100_000;
/** Under the 8 MiB gRPC message limit, with room for the rest of the request. */
const MAX_REPLACE_BYTES = 8 * 1024 * 1024 - 64 * 1024;

/**
 * `import --replace --domain D FILE`: the file becomes D's whole list, in
 * one ReplaceRelayRecipients call (all or nothing). A file without entries
 * is refused unless --allow-empty: an export that came out empty (a failed
 * LDAP query, a truncated CSV) must not wipe the list.
 */
async function replaceImport(ctx: Ctx, file: string, domain: string | undefined, dryRun: boolean, allowEmpty: boolean): Promise<void> {
  if (!domain) throw new UsageError('--replace needs --domain D: the relay domain whose list the file replaces');
  const entries = parseImport(await readSource(file, ctx.io.stdin));
  if (!entries.length && !allowEmpty) {
    throw new UsageError(`${file}: no entries; with --replace that would remove every relay recipient of ${domain}. Nothing was changed (add --allow-empty if that is what you want)`);
  }
  if (entries.length > MAX_REPLACE) throw new UsageError(`${file}: ${entries.length} entries; a replace takes at most ${MAX_REPLACE} (split the domain's list, or import without --replace)`);
  // One call carries the whole list; the services take messages up to 8 MiB (libs/grpc).
  const bytes = entries.reduce((n, e) => n + Buffer.byteLength(e.address) + 3, 0);
  if (bytes > MAX_REPLACE_BYTES) throw new UsageError(`${file}: ${bytes} bytes of entries; a replace takes at most ${MAX_REPLACE_BYTES} (import without --replace, in batches)`);
  const res = await ctx.api
    .replaceRelayRecipients({ domain, addresses: entries.map((e) => e.address), dryRun, allowEmpty })
    .catch((err: unknown) => Promise.reject(atLine(err, file, entries, 'nothing was changed')));
  if (ctx.json) {
    ctx.out(json({ file, domain, lines: entries.length, added: res.added, removed: res.removed, kept: res.kept, dryRun: res.dryRun }));
    return;
  }
  const verb = res.dryRun ? 'Would replace' : 'Replaced';
  ctx.out(`${verb} the relay recipients of ${domain} with ${file} (${entries.length} entries): ${res.added} added, ${res.removed} removed, ${res.kept} kept.\n`);
}

export function registerRelayRecipientCommands(program: Command, run: Run): void {
  const rr = program
    .command('relay-recipient')
    .description(
      'the recipients of relay domains that exist ("user@domain", or "@domain" for all of a domain); a relay domain with --recipients list refuses others at RCPT with 550 5.1.1',
    );
  rr.command('ls')
    .alias('list')
    .description('entries, in address order (a page at a time)')
    .option('--domain <domain>', 'only this domain')
    .option('--limit <n>', 'entries per page (at most 1000)', '100')
    .option('--after <address>', 'the page after this address (printed as "More: --after ...")')
    .action(
      run(async (ctx, o: { domain?: string; limit: string; after?: string }) => {
        const limit = Number(o.limit);
        if (!Number.isInteger(limit) || limit < 1 || limit > 1000) throw new UsageError(`--limit: "${o.limit}" is not a number from 1 to 1000`);
        const res = await ctx.api.listRelayRecipients({ domain: o.domain ?? '', limit, pageToken: o.after ?? '' });
        ctx.out(ctx.json ? json(ListRelayRecipientsResponse.toJSON(res)) : formatRelayRecipients(res.recipients, res.nextPageToken));
      }),
    );
  rr.command('add')
    .description('add entries (their domains must be relay domains: tern domain add D --kind relay --recipients list)')
    .argument('<address...>', '"user@domain", or "@domain" for every address of the domain')
    .option('--dry-run', 'check and count only; nothing is written')
    .action(
      run(async (ctx, addresses: string[], o: { dryRun?: boolean }) => {
        const res = await ctx.api.putRelayRecipients({ addresses, dryRun: Boolean(o.dryRun) });
        ctx.out(ctx.json ? json(PutRelayRecipientsResponse.toJSON(res)) : `${res.dryRun ? 'Would add' : 'Added'} ${res.added} relay recipient(s); ${res.unchanged} already listed.\n`);
      }),
    );
  rr.command('rm')
    .alias('remove')
    .description('remove entries, or every entry of a domain (--domain)')
    .argument('[address...]', 'entries as listed')
    .option('--domain <domain>', 'every entry of this domain instead')
    .option('--dry-run', 'count only; nothing is removed')
    .action(
      run(async (ctx, addresses: string[], o: { domain?: string; dryRun?: boolean }) => {
        if (!addresses.length && !o.domain) throw new UsageError('name the entries to remove, or --domain D for every entry of a domain');
        if (addresses.length && o.domain) throw new UsageError('give either addresses or --domain, not both');
        const res = await ctx.api.deleteRelayRecipients({ addresses, domain: o.domain ?? '', dryRun: Boolean(o.dryRun) });
        if (ctx.json) ctx.out(json(DeleteRelayRecipientsResponse.toJSON(res)));
        else ctx.out(`${res.dryRun ? 'Would remove' : 'Removed'} ${res.deleted} relay recipient(s).\n`);
        if (!res.deleted && !res.dryRun) throw new CliError(`no such relay recipient${o.domain ? ` at ${o.domain}` : ''}: nothing removed (see tern relay-recipient ls)`, EXIT.NOT_FOUND);
      }),
    );
  rr.command('import')
    .description(
      'add the entries of a file ("-" = stdin): one per line, "user@domain" or "@domain", # comments; a Postfix relay_recipient_maps source ("user@domain OK") works as it is. Every line is checked before anything is written. With --replace --domain D the file becomes the whole list of D (a sync from an export, e.g. by cron)',
    )
    .argument('<file>', 'the file, or - for stdin')
    .option('--dry-run', 'check every line and count what would be added (and with --replace, removed and kept); nothing is written')
    .option('--replace', 'make the file the whole list of --domain in one transaction: entries of the domain not in the file are removed')
    .option('--domain <domain>', 'with --replace: the relay domain whose list the file replaces (every entry must be of it)')
    .option('--allow-empty', 'with --replace: accept a file without entries, which removes every entry of the domain')
    .action(
      run(async (ctx, file: string, o: { dryRun?: boolean; replace?: boolean; domain?: string; allowEmpty?: boolean }) => {
        if (!o.replace && (o.domain !== undefined || o.allowEmpty)) throw new UsageError(`${o.domain !== undefined ? '--domain' : '--allow-empty'} goes with --replace (an import without it only adds)`);
        if (o.replace) return replaceImport(ctx, file, o.domain, Boolean(o.dryRun), Boolean(o.allowEmpty));
        const entries = parseImport(await readSource(file, ctx.io.stdin));
        if (!entries.length) throw new UsageError(`${file}: no entries (one "user@domain" or "@domain" per line)`);
        const batches: { address: string; line: number }[][] = [];
        for (let i = 0; i < entries.length; i += BATCH) batches.push(entries.slice(i, i + BATCH));
        // Every batch is checked first, so a bad line anywhere writes nothing.
        let added = 0;
        let unchanged = 0;
        for (const b of batches) {
          const res = await ctx.api.putRelayRecipients({ addresses: b.map((e) => e.address), dryRun: true }).catch((err: unknown) => Promise.reject(atLine(err, file, b)));
          added += res.added;
          unchanged += res.unchanged;
        }
        if (!o.dryRun) {
          added = 0;
          unchanged = 0;
          for (const b of batches) {
            const res = await ctx.api.putRelayRecipients({ addresses: b.map((e) => e.address), dryRun: false }).catch((err: unknown) => Promise.reject(atLine(err, file, b)));
            added += res.added;
            unchanged += res.unchanged;
          }
        }
        const summary = { file, lines: entries.length, added, unchanged, dryRun: Boolean(o.dryRun) };
        ctx.out(ctx.json ? json(summary) : `${o.dryRun ? 'Would add' : 'Added'} ${added} relay recipient(s) from ${file} (${entries.length} entries; ${unchanged} already listed).\n`);
      }),
    );

  const verify = program
    .command('verify')
    .description('the cache of recipient verification callouts (relay domains with --recipients callout): what next hops answered, shared by every policy pod');
  verify
    .command('ls')
    .alias('list')
    .description('cached answers (ok: kept TERN_VERIFY_POSITIVE_TTL_S; reject: TERN_VERIFY_NEGATIVE_TTL_S)')
    .option('--domain <domain>', 'only this domain')
    .option('--limit <n>', 'entries per page (at most 1000)', '100')
    .option('--after <address>', 'the page after this address')
    .action(
      run(async (ctx, o: { domain?: string; limit: string; after?: string }) => {
        const limit = Number(o.limit);
        if (!Number.isInteger(limit) || limit < 1 || limit > 1000) throw new UsageError(`--limit: "${o.limit}" is not a number from 1 to 1000`);
        const res = await ctx.api.listVerifiedRecipients({ domain: o.domain ?? '', limit, pageToken: o.after ?? '' });
        ctx.out(ctx.json ? json(ListVerifiedRecipientsResponse.toJSON(res)) : formatVerified(res.recipients, res.nextPageToken));
      }),
    );
  verify
    .command('flush')
    .description('forget a cached answer (the next RCPT asks the next hop again), e.g. after a mailbox was created there')
    .argument('<address>', '"user@domain", or "@domain" for every address of the domain')
    .action(
      run(async (ctx, address: string) => {
        const res = await ctx.api.flushVerifiedRecipients({ address });
        if (ctx.json) ctx.out(json(FlushVerifiedRecipientsResponse.toJSON(res)));
        else if (res.deleted) ctx.out(`Forgot ${res.deleted} verification result(s) for ${address}.\n`);
        if (!res.deleted) throw new CliError(`no cached verification for ${address}: nothing forgotten (see tern verify ls)`, EXIT.NOT_FOUND);
      }),
    );
}
