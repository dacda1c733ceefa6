// `tern bounce-rule ...`: the operator's rules that classify failure replies
// (user_unknown, reputation, ...), checked before the built-in ones. The
// class decides what a failure does: only user_unknown from a remote server
// suppresses the address; reputation and rate_limited back off the whole
// destination. Stored by the queue; every replica applies a change within seconds.
import type { Command } from '@commander-js/extra-typings';
import { ListBounceRulesResponse, PutBounceRuleResponse, type BounceRule } from '@tern/proto';
import type { AdminApi } from './client';
import { CliError, EXIT } from './errors';
import { json, table } from './format';

interface RuleCtx {
  api: AdminApi;
  json: boolean;
  out(text: string): void;
}

type Run = <A extends unknown[]>(fn: (ctx: RuleCtx, ...args: A) => Promise<void>) => (...args: A) => Promise<void>;

const CLASSES = 'user_unknown, mailbox_full, policy, reputation, message_too_large, dns_failure, tls_failure, rate_limited, other';

export function formatBounceRules(rules: BounceRule[]): string {
  if (!rules.length) return 'No bounce rules: failures are classified by the built-in rules only. Add one with tern bounce-rule set <name> <class> --code 5.7. --text "..."\n';
  return table(
    ['NAME', 'CODE', 'TEXT', 'CLASS', 'DESCRIPTION'],
    rules.map((r) => [r.name, r.codePrefix || '*', r.pattern || '*', r.bounceClass, r.description]),
  );
}

export function registerBounceRuleCommands(program: Command, run: Run): void {
  const rule = program
    .command('bounce-rule')
    .description(`rules that classify failure replies (${CLASSES}), checked in name order before the built-in ones`);

  rule
    .command('ls')
    .alias('list')
    .description('the rules, in the order they are checked')
    .action(
      run(async (ctx) => {
        const res = await ctx.api.listBounceRules({});
        ctx.out(ctx.json ? json(ListBounceRulesResponse.toJSON(res)) : formatBounceRules(res.rules));
      }),
    );

  rule
    .command('set')
    .description('add or replace a rule; it matches a reply whose code starts with --code and whose text matches --text (give at least one)')
    .argument('<name>', 'its name: a-z, 0-9, ".", "_", "-" (rules are checked in name order)')
    .argument('<class>', CLASSES)
    .option('--code <prefix>', 'enhanced status prefix ("5.7.", "4.7.28") or reply code ("554")')
    .option('--text <regex>', 'regular expression over the reply text, case-insensitive')
    .option('--description <text>', 'why the rule exists', '')
    .action(
      run(async (ctx, name: string, cls: string, o: { code?: string; text?: string; description: string }) => {
        const res = await ctx.api.putBounceRule({ rule: { name, bounceClass: cls, codePrefix: o.code ?? '', pattern: o.text ?? '', description: o.description } });
        const r = res.rule!;
        ctx.out(
          ctx.json
            ? json(PutBounceRuleResponse.toJSON(res))
            : `Bounce rule ${r.name} saved: code ${r.codePrefix || 'any'}, text ${r.pattern ? `/${r.pattern}/i` : 'any'} -> ${r.bounceClass}. The queue applies it within seconds.\n`,
        );
      }),
    );

  rule
    .command('rm')
    .alias('remove')
    .description('remove a rule')
    .argument('<name>', 'its name (tern bounce-rule ls)')
    .action(
      run(async (ctx, name: string) => {
        const res = await ctx.api.deleteBounceRule({ name });
        if (ctx.json) ctx.out(json({ deleted: res.deleted }));
        else if (res.deleted) ctx.out(`Deleted bounce rule ${name}.\n`);
        if (!res.deleted) throw new CliError(`no bounce rule ${name}: nothing deleted (tern bounce-rule ls lists them)`, EXIT.NOT_FOUND);
      }),
    );
}
