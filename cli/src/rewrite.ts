// `tern canonical ...`, `tern bcc ...` and `tern srs status`: the address
// rewriting rules of policy (Postfix canonical_maps, masquerade_domains,
// masquerade_exceptions, sender/recipient_bcc_maps) and the Sender Rewriting Scheme settings.
// Stored by policy; every policy pod applies a change within seconds.
import type { Command } from '@commander-js/extra-typings';
import { ListRewritesResponse, PutRewriteResponse, RewriteKind, SrsStatusResponse, type Rewrite } from '@tern/proto';
import type { AdminApi } from './client';
import { CliError, EXIT } from './errors';
import { json, table } from './format';

interface RewriteCtx {
  api: AdminApi;
  json: boolean;
  out(text: string): void;
}

type Run = <A extends unknown[]>(fn: (ctx: RewriteCtx, ...args: A) => Promise<void>) => (...args: A) => Promise<void>;

const CANONICAL: Record<string, RewriteKind> = {
  sender: RewriteKind.REWRITE_KIND_SENDER_CANONICAL,
  recipient: RewriteKind.REWRITE_KIND_RECIPIENT_CANONICAL,
  both: RewriteKind.REWRITE_KIND_CANONICAL,
};
const BCC: Record<string, RewriteKind> = {
  sender: RewriteKind.REWRITE_KIND_SENDER_BCC,
  recipient: RewriteKind.REWRITE_KIND_RECIPIENT_BCC,
};
const KIND_NAME: Partial<Record<RewriteKind, string>> = {
  [RewriteKind.REWRITE_KIND_SENDER_CANONICAL]: 'sender',
  [RewriteKind.REWRITE_KIND_RECIPIENT_CANONICAL]: 'recipient',
  [RewriteKind.REWRITE_KIND_CANONICAL]: 'both',
  [RewriteKind.REWRITE_KIND_MASQUERADE]: 'masquerade',
  [RewriteKind.REWRITE_KIND_MASQUERADE_EXCEPTION]: 'masquerade-except',
  [RewriteKind.REWRITE_KIND_SENDER_BCC]: 'sender',
  [RewriteKind.REWRITE_KIND_RECIPIENT_BCC]: 'recipient',
};

function kindOf(table: Record<string, RewriteKind>, given: string, command: string): RewriteKind {
  const k = table[given.trim().toLowerCase()];
  if (k === undefined) throw new CliError(`--kind: "${given}" is not one of ${Object.keys(table).join(', ')} (tern ${command} --help)`, EXIT.USAGE);
  return k;
}

const isBcc = (r: Rewrite) => r.kind === RewriteKind.REWRITE_KIND_SENDER_BCC || r.kind === RewriteKind.REWRITE_KIND_RECIPIENT_BCC;

/** What a rule without a target does, for the TARGET column. */
function implied(r: Rewrite): string {
  if (r.kind === RewriteKind.REWRITE_KIND_MASQUERADE) return `(*.${r.match} -> ${r.match})`;
  if (r.kind === RewriteKind.REWRITE_KIND_MASQUERADE_EXCEPTION) return `(${r.match}@* never masqueraded)`;
  return '';
}

export function formatCanonical(rules: Rewrite[]): string {
  const rows = rules.filter((r) => !isBcc(r));
  if (!rows.length) return 'No canonical or masquerade rules: addresses are stored as given. Add one with tern canonical set <match> <target> --kind sender\n';
  return table(
    ['KIND', 'MATCH', 'TARGET', 'HEADERS', 'UPDATED BY'],
    rows.map((r) => [KIND_NAME[r.kind] ?? String(r.kind), r.match, r.target || implied(r), r.headers ? 'yes' : r.kind === RewriteKind.REWRITE_KIND_MASQUERADE_EXCEPTION ? '-' : 'no', r.updatedBy]),
  );
}

export function formatBcc(rules: Rewrite[]): string {
  const rows = rules.filter(isBcc);
  if (!rows.length) return 'No bcc rules: no archive copies are made. Add one with tern bcc set <match> <archive-address> --kind recipient\n';
  return table(
    ['KIND', 'MATCH', 'ARCHIVE', 'UPDATED BY'],
    rows.map((r) => [KIND_NAME[r.kind] ?? String(r.kind), r.match, r.target, r.updatedBy]),
  );
}

export function registerRewriteCommands(program: Command, run: Run): void {
  const canonical = program
    .command('canonical')
    .description('canonical address rewriting (Postfix canonical maps), masquerading of sender domains and its exceptions');

  canonical
    .command('ls')
    .alias('list')
    .description('the canonical and masquerade rules')
    .action(
      run(async (ctx) => {
        const res = await ctx.api.listRewrites({});
        const rules = res.rewrites.filter((r) => !isBcc(r));
        ctx.out(ctx.json ? json(ListRewritesResponse.toJSON({ rewrites: rules })) : formatCanonical(rules));
      }),
    );

  canonical
    .command('set')
    .description('add or replace a rule: the address or @domain <match> is stored as <target> (an @domain target keeps the local part)')
    .argument('<match>', 'an address, or @domain')
    .argument('<target>', 'an address, or @domain for an @domain match')
    .option('--kind <kind>', 'sender (envelope sender), recipient (envelope recipients) or both', 'sender')
    .option('--headers', 'rewrite the header addresses too (From, Sender, Reply-To for sender; To, Cc for recipient)', false)
    .action(
      run(async (ctx, match: string, target: string, o: { kind: string; headers: boolean }) => {
        const res = await ctx.api.putRewrite({ rewrite: { kind: kindOf(CANONICAL, o.kind, 'canonical set'), match, target, headers: o.headers, updatedAt: undefined, updatedBy: '' } });
        const r = res.rewrite!;
        ctx.out(
          ctx.json
            ? json(PutRewriteResponse.toJSON(res))
            : `Canonical rule saved: ${KIND_NAME[r.kind]} ${r.match} -> ${r.target}${r.headers ? ' (envelope and headers)' : ' (envelope only)'}. Policy applies it within seconds.\n`,
        );
      }),
    );

  canonical
    .command('masquerade')
    .description('shorten senders at subdomains of <domain> to it (user@host.example.com -> user@example.com)')
    .argument('<domain>', 'the domain senders are shortened to')
    .option('--headers', 'masquerade header addresses too (From, Sender, Reply-To, To, Cc)', false)
    .action(
      run(async (ctx, domain: string, o: { headers: boolean }) => {
        const res = await ctx.api.putRewrite({ rewrite: { kind: RewriteKind.REWRITE_KIND_MASQUERADE, match: domain, target: '', headers: o.headers, updatedAt: undefined, updatedBy: '' } });
        const r = res.rewrite!;
        ctx.out(ctx.json ? json(PutRewriteResponse.toJSON(res)) : `Masquerading saved: senders at *.${r.match} are stored as at ${r.match}${r.headers ? ', headers too' : ''}. Policy applies it within seconds.\n`);
      }),
    );

  canonical
    .command('masquerade-except')
    .description('never masquerade these local parts (Postfix masquerade_exceptions): root@host.example.com stays as it is while joe@host.example.com becomes joe@example.com')
    .argument('<local-part...>', 'local parts, e.g. root mailer-daemon (the whole local part is compared: root+x is not root)')
    .action(
      run(async (ctx, locals: string[]) => {
        const saved: Rewrite[] = [];
        for (const match of locals) {
          const res = await ctx.api.putRewrite({ rewrite: { kind: RewriteKind.REWRITE_KIND_MASQUERADE_EXCEPTION, match, target: '', headers: false, updatedAt: undefined, updatedBy: '' } });
          saved.push(res.rewrite!);
        }
        ctx.out(
          ctx.json
            ? json(ListRewritesResponse.toJSON({ rewrites: saved }))
            : `Masquerade exception${saved.length === 1 ? '' : 's'} saved: ${saved.map((r) => r.match).join(', ')} never masqueraded (envelope and headers). Policy applies it within seconds.\n`,
        );
      }),
    );

  canonical
    .command('rm')
    .alias('remove')
    .description('remove a rule')
    .argument('<match>', 'its match (tern canonical ls)')
    .option('--kind <kind>', 'sender, recipient, both, masquerade or masquerade-except', 'sender')
    .action(
      run(async (ctx, match: string, o: { kind: string }) => {
        const kind = kindOf(
          { ...CANONICAL, masquerade: RewriteKind.REWRITE_KIND_MASQUERADE, 'masquerade-except': RewriteKind.REWRITE_KIND_MASQUERADE_EXCEPTION },
          o.kind,
          'canonical rm',
        );
        const res = await ctx.api.deleteRewrite({ kind, match });
        if (ctx.json) ctx.out(json({ deleted: res.deleted }));
        else if (res.deleted) ctx.out(`Deleted ${o.kind} rule ${match}.\n`);
        if (!res.deleted) throw new CliError(`no ${o.kind} rule for ${match}: nothing deleted (tern canonical ls lists them)`, EXIT.NOT_FOUND);
      }),
    );

  const bcc = program.command('bcc').description('archive copies (Postfix sender_bcc_maps, recipient_bcc_maps): an added envelope recipient, in no header, with NOTIFY=NEVER');

  bcc
    .command('ls')
    .alias('list')
    .description('the bcc rules')
    .action(
      run(async (ctx) => {
        const res = await ctx.api.listRewrites({});
        const rules = res.rewrites.filter(isBcc);
        ctx.out(ctx.json ? json(ListRewritesResponse.toJSON({ rewrites: rules })) : formatBcc(rules));
      }),
    );

  bcc
    .command('set')
    .description('add or replace a rule: mail from (sender) or to (recipient) <match> is copied to <archive>')
    .argument('<match>', 'an address, or @domain')
    .argument('<archive>', 'the archive address')
    .option('--kind <kind>', 'sender or recipient', 'recipient')
    .action(
      run(async (ctx, match: string, archive: string, o: { kind: string }) => {
        const res = await ctx.api.putRewrite({ rewrite: { kind: kindOf(BCC, o.kind, 'bcc set'), match, target: archive, headers: false, updatedAt: undefined, updatedBy: '' } });
        const r = res.rewrite!;
        ctx.out(ctx.json ? json(PutRewriteResponse.toJSON(res)) : `Bcc rule saved: mail ${KIND_NAME[r.kind] === 'sender' ? 'from' : 'to'} ${r.match} is copied to ${r.target}. Policy applies it within seconds.\n`);
      }),
    );

  bcc
    .command('rm')
    .alias('remove')
    .description('remove a rule')
    .argument('<match>', 'its match (tern bcc ls)')
    .option('--kind <kind>', 'sender or recipient', 'recipient')
    .action(
      run(async (ctx, match: string, o: { kind: string }) => {
        const res = await ctx.api.deleteRewrite({ kind: kindOf(BCC, o.kind, 'bcc rm'), match });
        if (ctx.json) ctx.out(json({ deleted: res.deleted }));
        else if (res.deleted) ctx.out(`Deleted ${o.kind} bcc rule ${match}.\n`);
        if (!res.deleted) throw new CliError(`no ${o.kind} bcc rule for ${match}: nothing deleted (tern bcc ls lists them)`, EXIT.NOT_FOUND);
      }),
    );

  const srs = program.command('srs').description('the Sender Rewriting Scheme for mail forwarded to remote alias targets (TERN_SRS_* on policy)');
  srs
    .command('status')
    .description('whether SRS is on, its domain, secrets and maximum age (never the secrets themselves)')
    .action(
      run(async (ctx) => {
        const res = await ctx.api.srsStatus({});
        if (ctx.json) return ctx.out(json(SrsStatusResponse.toJSON(res)));
        if (!res.enabled) return ctx.out('SRS is off: forwarded mail keeps its sender. Set TERN_SRS_DOMAIN and TERN_SRS_SECRETS on policy to turn it on.\n');
        ctx.out(
          `SRS is on: domain ${res.domain}, ${res.secrets} secret${res.secrets === 1 ? '' : 's'} (the first signs), addresses honoured for ${res.maxAgeDays} days, ${res.hashLength}-character hash.\n` +
            `Example: user@example.com forwarded now is sent as ${res.example}\n`,
        );
      }),
    );
}
