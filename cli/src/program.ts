// The `tern` command tree (commander). Each action maps its arguments to a
// request (requests.ts), calls the admin API (client.ts) and prints a table
// (format.ts) or, with --json, the response as proto3 JSON.
import fs from 'node:fs';
import { Command, Option } from '@commander-js/extra-typings';
import {
  ListAliasesResponse,
  ListDestinationsResponse,
  ListDomainsResponse,
  ListMailboxesResponse,
  ListMessagesResponse,
  ListRoutesResponse,
  ListUsersResponse,
  ListSuppressionsResponse,
  MessageDetail,
  QueueSummaryResponse,
  Alias,
  Destination,
  Domain,
  DomainKind,
  Mailbox,
  RecipientCheck,
  Route,
  User,
} from '@tern/proto';
import { connect, type AdminApi, type Connection, type ConnectionOptions, resolveConnection, DEFAULT_ADDR } from './client';
import { registerDkimCommands } from './dkim';
import { registerLimitCommands } from './limit';
import { registerMilterCommands } from './milter';
import { registerRelayRecipientCommands } from './relay-recipient';
import { registerRewriteCommands } from './rewrite';
import { registerWebhookCommands } from './webhook';
import { registerBounceRuleCommands } from './bounce-rule';
import { CliError, EXIT, fileProblem } from './errors';
import * as f from './format';
import { passwordFromPrompt, passwordFromStdin } from './password';
import {
  ACTIONS,
  actionRequest,
  collect,
  domainFromArgs,
  listRequest,
  routeFromArgs,
  STATE_NAMES,
  userFromArgs,
  UsageError,
  type FilterOptions,
} from './requests';

export interface Io {
  stdout: NodeJS.WritableStream;
  stderr: NodeJS.WritableStream;
  stdin: NodeJS.ReadableStream;
  env: Record<string, string | undefined>;
  cwd: string;
  now(): Date;
}

interface Globals extends ConnectionOptions {
  json?: boolean;
}

/** What an action gets: the API, output helpers, and the resolved connection. */
interface Ctx {
  api: AdminApi;
  conn: Connection;
  json: boolean;
  out(text: string): void;
  io: Io;
}

/** The connection currently in use, for error messages. */
let lastConnection: Connection | undefined;
export const currentConnection = () => lastConnection;

interface Optionable {
  option(flags: string, description: string, parser?: (value: string, previous: string[]) => string[]): unknown;
}

function filterOptions(cmd: Optionable, stateDefault = ''): void {
  cmd.option('--sender <address>', 'sender address (exact)');
  cmd.option('--recipient <address>', 'recipient address (exact)');
  cmd.option('--domain <domain>', 'recipient domain (destination)');
  cmd.option(
    '--state <states>',
    `recipient state, comma-separated or repeated: ${STATE_NAMES.join(', ')}; or pending (queued, inflight, deferred, held), final (the others), all${stateDefault}`,
    collect,
  );
  cmd.option('--older-than <age>', 'only messages older than this (90s, 15m, 2h, 5d)');
  cmd.option('--newer-than <age>', 'only messages newer than this');
}

/** `-o FILE` opened for writing, or a UsageError saying why it cannot be. */
function openOutput(file: string): number {
  try {
    return fs.openSync(file, 'w');
  } catch (err) {
    const why = (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'its directory does not exist' : fileProblem(err);
    throw new UsageError(`-o ${file}: cannot write it (${why}); give a file in a directory you can write, or leave -o out for stdout`);
  }
}

export function buildProgram(io: Io): Command {
  const program = new Command()
    .name('tern')
    .description('Operate a Tern mail platform through its admin API.')
    .option('-s, --server <host:port>', `admin API address (env TERN_ADMIN_ADDR, default ${DEFAULT_ADDR})`)
    .option('-t, --token <token>', 'bearer token (env TERN_ADMIN_TOKEN; prefer the environment or a file over argv)')
    .option('--token-file <file>', 'file holding the token (env TERN_ADMIN_TOKEN_FILE; default .tern/admin-token of a local npm start)')
    .option('--tls', 'use TLS with the system CAs (env TERN_ADMIN_TLS=1)')
    .option('--ca-file <file>', 'CA that signed the server certificate (env TERN_ADMIN_CA_FILE; implies --tls)')
    .option('--cert-file <file>', 'client certificate for mTLS (env TERN_ADMIN_CERT_FILE)')
    .option('--key-file <file>', 'client key for mTLS (env TERN_ADMIN_KEY_FILE)')
    .option('--tls-server-name <name>', 'name expected in the server certificate (env TERN_ADMIN_TLS_SERVER_NAME)')
    .option('--timeout <seconds>', 'deadline of each call (env TERN_ADMIN_TIMEOUT, default 15)')
    .option('--json', 'machine output: the API response as proto3 JSON')
    .showHelpAfterError('(add --help for usage)')
    .exitOverride()
    .configureOutput({
      writeOut: (s) => io.stdout.write(s),
      writeErr: (s) => io.stderr.write(s),
      outputError: (s, write) => write(s.replace(/^error: /, 'tern: ')),
    });

  /** Wraps an action: connect, run, close. */
  const run =
    <A extends unknown[]>(fn: (ctx: Ctx, ...args: A) => Promise<void>) =>
    async (...args: A): Promise<void> => {
      const cmd = args[args.length - 1] as Command;
      const globals = cmd.optsWithGlobals() as Globals;
      const conn = resolveConnection(globals, io.env, io.cwd);
      lastConnection = conn;
      const api = connect(conn);
      try {
        await fn({ api, conn, json: Boolean(globals.json), out: (t) => io.stdout.write(t), io }, ...args);
      } finally {
        api.close();
      }
    };

  // ---- message
  const message = program.command('message').description('one message: inspect or download');
  message
    .command('show')
    .description('envelope, per-recipient state and attempt history')
    .argument('<id>', 'queue ID: 16 letters and digits (from "250 2.0.0 Ok: queued as <ID>", or tern queue ls)')
    .option('--headers', 'also print the header section')
    .action(
      run(async (ctx, id: string, o: { headers?: boolean }) => {
        const res = await ctx.api.getMessage({ queueId: id, includeHeaders: Boolean(o.headers) });
        if (!res.message) throw new CliError(`message ${id} not found`, EXIT.NOT_FOUND);
        ctx.out(ctx.json ? f.json(MessageDetail.toJSON(res.message)) : f.formatMessage(res.message, ctx.io.now()));
      }),
    );
  message
    .command('download')
    .description('the raw message as stored (RFC 5322), to stdout or a file')
    .argument('<id>', 'queue ID')
    .option('-o, --output <file>', 'write to this file instead of stdout')
    .option('--headers-only', 'only the header section')
    .action(
      run(async (ctx, id: string, o: { output?: string; headersOnly?: boolean }) => {
        // The file is opened first, so a path that cannot be written is named before anything is fetched.
        const sink: NodeJS.WritableStream = o.output ? fs.createWriteStream('', { fd: openOutput(o.output) }) : ctx.io.stdout;
        const stream = ctx.api.readBody({ queueId: id, headersOnly: Boolean(o.headersOnly) }, Math.max(ctx.conn.deadlineMs, 600_000));
        let size = 0;
        try {
          await new Promise<void>((resolve, reject) => {
            stream.on('data', (m: { chunk: Uint8Array }) => {
              size += m.chunk.length;
              if (!sink.write(Buffer.from(m.chunk))) {
                stream.pause();
                sink.once('drain', () => stream.resume());
              }
            });
            stream.on('error', reject);
            stream.on('end', resolve);
            sink.on('error', reject);
          });
        } catch (err) {
          if (o.output) {
            (sink as fs.WriteStream).destroy();
            fs.rmSync(o.output, { force: true });
          }
          throw err;
        }
        if (o.output) {
          await new Promise<void>((resolve, reject) => (sink as fs.WriteStream).end((err?: Error | null) => (err ? reject(err) : resolve())));
          ctx.io.stderr.write(`Wrote ${f.bytes(size)} to ${o.output}.\n`);
        }
      }),
    );

  // ---- queue
  const queue = program.command('queue').description('the queue: list, summarize, and act on messages');
  const ls = queue
    .command('ls')
    .alias('list')
    .description(
      'messages newest first, a page at a time; by default those with recipients not yet final (--state pending: queued, inflight, deferred, held), showing those recipients; --state final or all for delivered and failed history',
    )
    .option('--limit <n>', 'page size (1-1000)', '50')
    .option('--page-token <token>', 'the next (older) page: the token a previous page printed');
  filterOptions(ls as unknown as Optionable, ' (default pending)');
  ls.action(
    run(async (ctx, o: FilterOptions & { limit?: string; pageToken?: string }) => {
      const res = await ctx.api.listMessages(listRequest(o));
      ctx.out(ctx.json ? f.json(ListMessagesResponse.toJSON(res)) : f.formatMessageList(res.messages, res.nextPageToken, ctx.io.now(), !o.state?.length));
    }),
  );
  queue
    .command('summary')
    .description('recipients by destination and state, oldest, last error (like qshape)')
    .action(
      run(async (ctx) => {
        const res = await ctx.api.queueSummary({});
        ctx.out(ctx.json ? f.json(QueueSummaryResponse.toJSON(res)) : f.formatSummary(res.rows, ctx.io.now()));
      }),
    );
  const actionHelp: Record<(typeof ACTIONS)[number], string> = {
    hold: 'keep messages from delivery until released',
    release: 'release held messages',
    retry: 'attempt deferred messages now',
    delete: 'remove messages without a report (recorded with operator and reason)',
    bounce: 'fail messages now and send the sender a report',
  };
  for (const action of ACTIONS) {
    const cmd = queue
      .command(action)
      .description(`${actionHelp[action]}: one message by ID, every message the filter selects, or --all; --dry-run first counts what would change`)
      .argument('[id]', 'queue ID')
      .option('--all', 'every message in the queue (instead of an ID or a filter); recorded on each message it changes')
      .option('--dry-run', 'count what would change, change nothing')
      .option('--reason <text>', 'why (recorded with your operator name)');
    filterOptions(cmd as unknown as Optionable);
    cmd.action(
      run(async (ctx, id: string | undefined, o: FilterOptions & { all?: boolean; dryRun?: boolean; reason?: string }) => {
        const req = actionRequest(action, id, o);
        const res = await ctx.api.applyAction(req);
        if (ctx.json) {
          ctx.out(f.json({ action, queueId: req.queueId || undefined, all: req.all || undefined, messages: res.messages, recipients: res.recipients, dryRun: res.dryRun }));
        } else {
          ctx.out(f.formatAction(action, res));
        }
        if (id !== undefined && res.messages === 0 && !res.dryRun) {
          ctx.io.stderr.write(`tern: message ${id} had no recipients to ${action}.\n`);
        }
      }),
    );
  }

  // ---- destination
  const destination = program.command('destination').description('next-hop destinations: state, suspend, resume');
  destination
    .command('ls')
    .alias('list')
    .description('destinations with their concurrency and state')
    .action(
      run(async (ctx) => {
        const res = await ctx.api.listDestinations({});
        ctx.out(ctx.json ? f.json(ListDestinationsResponse.toJSON(res)) : f.formatDestinations(res.destinations));
      }),
    );
  destination
    .command('suspend')
    .description('stop delivering to a destination until resumed; a name the queue has never had mail for is refused unless --force')
    .argument('<destination>', 'destination name, e.g. example.com')
    .option('--reason <text>', 'why (recorded with your operator name)')
    .option('--force', 'suspend it even though the queue has never had mail for it (ahead of its first message)')
    .action(
      run(async (ctx, name: string, o: { reason?: string; force?: boolean }) => {
        const res = await ctx.api.suspendDestination({ destination: name, reason: o.reason ?? '', force: Boolean(o.force) });
        ctx.out(ctx.json ? f.json(res.destination ? Destination.toJSON(res.destination) : {}) : `Suspended ${name}.\n`);
      }),
    );
  destination
    .command('resume')
    .description('resume delivery to a suspended destination (one the queue knows)')
    .argument('<destination>', 'destination name')
    .action(
      run(async (ctx, name: string) => {
        const res = await ctx.api.resumeDestination({ destination: name });
        ctx.out(ctx.json ? f.json(res.destination ? Destination.toJSON(res.destination) : {}) : `Resumed ${name}.\n`);
      }),
    );

  /** `list` is the command that shows what there is (the next step after a typo). */
  const deleted = (ctx: Ctx, what: string, key: string, ok: boolean, list: string) => {
    if (ctx.json) ctx.out(f.json({ deleted: ok }));
    else if (ok) ctx.out(`Deleted ${what} ${key}.\n`);
    if (!ok) throw new CliError(`no ${what} ${key}: nothing deleted (${list} lists them)`, EXIT.NOT_FOUND);
  };

  // ---- route
  const route = program.command('route').description('next hop per recipient domain (smart host, LMTP, or MX)');
  route
    .command('ls')
    .alias('list')
    .description('routes')
    .action(
      run(async (ctx) => {
        const res = await ctx.api.listRoutes({});
        ctx.out(ctx.json ? f.json(ListRoutesResponse.toJSON(res)) : f.formatRoutes(res.routes));
      }),
    );
  route
    .command('set')
    .description('add or replace the route of a domain ("*" for every domain)')
    .argument('<domain>', 'recipient domain, or "*"')
    .addOption(new Option('--kind <kind>', 'how to reach the next hop').choices(['mx', 'smarthost', 'lmtp']).makeOptionMandatory())
    .option('--target <host:port>', 'smart host or LMTP server (host:port, or unix:/path for LMTP)')
    .addOption(new Option('--tls-policy <policy>', 'TLS towards the next hop (default may)').choices(['none', 'may', 'encrypt', 'verify']))
    .option('--auth-user <user>', 'SMTP AUTH user at the smart host')
    .option('--auth-secret <name>', 'name of the secret holding the AUTH password')
    .action(
      run(async (ctx, domain: string, o: { kind: string; target?: string; tlsPolicy?: string; authUser?: string; authSecret?: string }) => {
        const res = await ctx.api.putRoute({ route: routeFromArgs(domain, o) });
        const r = res.route;
        ctx.out(
          ctx.json
            ? f.json(r ? Route.toJSON(r) : {})
            : `Route for ${r?.domain ?? domain}: ${f.routeKind(r?.kind ?? 0)}${r?.target ? ` via ${r.target}` : ''}, TLS ${f.tlsPolicy(r?.tls ?? 0)}.\n`,
        );
      }),
    );
  route
    .command('rm')
    .alias('remove')
    .description('remove the route of a domain (back to MX)')
    .argument('<domain>', 'recipient domain, or "*"')
    .action(
      run(async (ctx, domain: string) => {
        const res = await ctx.api.deleteRoute({ domain });
        deleted(ctx, 'route for', domain, res.deleted, 'tern route ls');
      }),
    );

  // ---- domain
  const domain = program.command('domain').description('mail domains: local (mailboxes here) or relay (accepted and forwarded)');
  domain
    .command('ls')
    .alias('list')
    .description('domains')
    .action(
      run(async (ctx) => {
        const res = await ctx.api.listDomains({});
        ctx.out(ctx.json ? f.json(ListDomainsResponse.toJSON(res)) : f.formatDomains(res.domains));
      }),
    );
  domain
    .command('add')
    .description('add or update a domain')
    .argument('<name>', 'domain name')
    .addOption(new Option('--kind <kind>', 'local or relay').choices(['local', 'relay']).default('local'))
    .option('--catch-all <address>', 'local domains: where mail for unknown users goes')
    .option('--max-size <size>', 'largest message for this domain (e.g. 25M); default the global limit')
    .addOption(
      new Option(
        '--recipients <check>',
        'relay domains: how RCPT is checked: none (accept all), list (tern relay-recipient), callout (ask the next hop, cached: tern verify); default: what the domain has, none for a new one',
      ).choices(['none', 'list', 'callout']),
    )
    .action(
      run(async (ctx, name: string, o: { kind?: string; catchAll?: string; maxSize?: string; recipients?: string }) => {
        const res = await ctx.api.putDomain({ domain: domainFromArgs(name, o) });
        const d = res.domain;
        const check = d?.kind === DomainKind.DOMAIN_KIND_RELAY ? `, recipients: ${f.enumName(RecipientCheck, 'RECIPIENT_CHECK_', d.recipientCheck)}` : '';
        ctx.out(ctx.json ? f.json(d ? Domain.toJSON(d) : {}) : `Domain ${d?.name ?? name} (${o.kind ?? 'local'}${check}) saved.\n`);
      }),
    );
  domain
    .command('rm')
    .alias('remove')
    .description('remove a domain (it must have no mailboxes or aliases)')
    .argument('<name>', 'domain name')
    .action(
      run(async (ctx, name: string) => {
        const res = await ctx.api.deleteDomain({ name });
        deleted(ctx, 'domain', name, res.deleted, 'tern domain ls');
      }),
    );

  // ---- mailbox
  const mailbox = program.command('mailbox').description('mailboxes of local domains');
  mailbox
    .command('ls')
    .alias('list')
    .description('mailboxes')
    .option('--domain <domain>', 'only this domain')
    .action(
      run(async (ctx, o: { domain?: string }) => {
        const res = await ctx.api.listMailboxes({ domain: o.domain ?? '' });
        ctx.out(ctx.json ? f.json(ListMailboxesResponse.toJSON(res)) : f.formatMailboxes(res.mailboxes));
      }),
    );
  mailbox
    .command('add')
    .description('add or update a mailbox')
    .argument('<address>', 'user@local-domain')
    .option('--disabled', 'refuse mail for it (550 5.2.1)')
    .action(
      run(async (ctx, address: string, o: { disabled?: boolean }) => {
        const res = await ctx.api.putMailbox({ mailbox: { address, enabled: !o.disabled } });
        const m = res.mailbox;
        ctx.out(ctx.json ? f.json(m ? Mailbox.toJSON(m) : {}) : `Mailbox ${m?.address ?? address} saved${o.disabled ? ' (disabled)' : ''}.\n`);
      }),
    );
  mailbox
    .command('rm')
    .alias('remove')
    .description('remove a mailbox')
    .argument('<address>', 'mailbox address')
    .action(
      run(async (ctx, address: string) => {
        const res = await ctx.api.deleteMailbox({ address });
        deleted(ctx, 'mailbox', address, res.deleted, 'tern mailbox ls');
      }),
    );

  // ---- alias
  const alias = program.command('alias').description('aliases of local domains');
  alias
    .command('ls')
    .alias('list')
    .description('aliases')
    .option('--domain <domain>', 'only this domain')
    .action(
      run(async (ctx, o: { domain?: string }) => {
        const res = await ctx.api.listAliases({ domain: o.domain ?? '' });
        ctx.out(ctx.json ? f.json(ListAliasesResponse.toJSON(res)) : f.formatAliases(res.aliases));
      }),
    );
  alias
    .command('add')
    .description('add or replace an alias: mail to it is stored and delivered for its targets (expanded recursively at RCPT, each address once, the alias kept as ORCPT)')
    .argument('<address>', 'alias address at a local domain, or @domain for the catch-all (addresses that are neither a mailbox nor an alias)')
    .argument('<targets...>', 'where its mail goes: addresses, local or elsewhere, other aliases included; the alias\'s own address keeps a copy')
    .action(
      run(async (ctx, address: string, targets: string[]) => {
        const res = await ctx.api.putAlias({ alias: { address, targets: targets.flatMap((t) => t.split(',')).map((t) => t.trim()).filter(Boolean) } });
        const a = res.alias;
        ctx.out(ctx.json ? f.json(a ? Alias.toJSON(a) : {}) : `Alias ${a?.address ?? address} -> ${(a?.targets ?? targets).join(', ')} saved.\n`);
      }),
    );
  alias
    .command('rm')
    .alias('remove')
    .description('remove an alias')
    .argument('<address>', 'alias address, or @domain')
    .action(
      run(async (ctx, address: string) => {
        const res = await ctx.api.deleteAlias({ address });
        deleted(ctx, 'alias', address, res.deleted, 'tern alias ls');
      }),
    );

  // ---- user
  const user = program.command('user').description('submission users (SMTP AUTH)');
  user
    .command('ls')
    .alias('list')
    .description('users')
    .action(
      run(async (ctx) => {
        const res = await ctx.api.listUsers({});
        ctx.out(ctx.json ? f.json(ListUsersResponse.toJSON(res)) : f.formatUsers(res.users));
      }),
    );
  user
    .command('add')
    .description('add or update a user; the password is read from stdin (--password-stdin) or a prompt, never argv')
    .argument('<username>', 'login name (often an address)')
    .option('--allowed-sender <address>', 'address or @domain the user may send as (repeatable)', collect)
    .option('--may-relay', 'may send to any domain')
    .option('--disabled', 'refuse logins')
    .option('--password-stdin', 'read the password from stdin (one line)')
    .option('--keep-password', 'update the user without changing the password')
    .action(
      run(async (ctx, username: string, o: { allowedSender?: string[]; mayRelay?: boolean; disabled?: boolean; passwordStdin?: boolean; keepPassword?: boolean }) => {
        if (o.passwordStdin && o.keepPassword) throw new UsageError('--password-stdin and --keep-password exclude each other');
        const password = o.keepPassword ? '' : o.passwordStdin ? await passwordFromStdin(ctx.io.stdin) : await passwordFromPrompt(username);
        const res = await ctx.api.putUser({ user: userFromArgs(username, o), password });
        const u = res.user;
        ctx.out(ctx.json ? f.json(u ? User.toJSON(u) : {}) : `User ${u?.username ?? username} saved${password ? '' : ' (password unchanged)'}.\n`);
      }),
    );
  user
    .command('rm')
    .alias('remove')
    .description('remove a user')
    .argument('<username>', 'login name')
    .action(
      run(async (ctx, username: string) => {
        const res = await ctx.api.deleteUser({ username });
        deleted(ctx, 'user', username, res.deleted, 'tern user ls');
      }),
    );

  // ---- suppression list
  const suppression = program
    .command('suppression')
    .description(
      "recipients a remote server refused as addresses (5.1.1, 5.1.3, 5.1.6), or listed by hand; refused at RCPT for the senders policy's TERN_SUPPRESSION_ENFORCE names (default: authenticated and trusted clients) until they expire (TERN_SUPPRESSION_KEEP_S, 30 days)",
    );
  suppression
    .command('ls')
    .alias('list')
    .description('suppressed addresses not yet expired, in address order')
    .option('--domain <domain>', 'only this domain')
    .option('--limit <n>', 'page size (default 100, at most 1000)')
    .option('--page-token <token>', 'continue from a previous page')
    .action(
      run(async (ctx, o: { domain?: string; limit?: string; pageToken?: string }) => {
        const limit = o.limit === undefined ? 0 : Number(o.limit);
        if (o.limit !== undefined && (!Number.isInteger(limit) || limit < 1 || limit > 1000)) throw new UsageError(`--limit: expected a whole number from 1 to 1000 (got "${o.limit}")`);
        const res = await ctx.api.listSuppressions({ domain: o.domain ?? '', limit, pageToken: o.pageToken ?? '' });
        ctx.out(ctx.json ? f.json(ListSuppressionsResponse.toJSON(res)) : f.formatSuppressions(res.suppressions, res.nextPageToken));
      }),
    );
  suppression
    .command('add')
    .description('suppress an address by hand (for TERN_SUPPRESSION_KEEP_S, like the others)')
    .argument('<address>', 'recipient address')
    .option('--reason <text>', 'why (shown in the refusal)', '')
    .action(
      run(async (ctx, address: string, o: { reason: string }) => {
        const res = await ctx.api.suppress({ suppressions: [{ address, reason: o.reason }] });
        ctx.out(ctx.json ? f.json({ added: res.added }) : `${address} suppressed${res.added ? '' : ' (was already listed; refreshed)'}.\n`);
      }),
    );
  suppression
    .command('rm')
    .alias('remove')
    .description('remove an address from the list (mail to it is accepted again)')
    .argument('<address>', 'recipient address')
    .action(
      run(async (ctx, address: string) => {
        const res = await ctx.api.deleteSuppression({ address });
        deleted(ctx, 'suppression of', address, res.deleted, 'tern suppression ls');
      }),
    );

  // ---- DKIM keys (cli/src/dkim.ts)
  registerDkimCommands(program as unknown as Command, run);
  // ---- rate limits (cli/src/limit.ts)
  registerLimitCommands(program as unknown as Command, run);

  // ---- milters (cli/src/milter.ts)
  registerMilterCommands(program as unknown as Command, run);
  // ---- bounce classification rules (cli/src/bounce-rule.ts)
  registerBounceRuleCommands(program as unknown as Command, run);

  // ---- relay recipients and the verification cache (cli/src/relay-recipient.ts)
  registerRelayRecipientCommands(program as unknown as Command, run);

  // ---- webhook endpoints (cli/src/webhook.ts)
  registerWebhookCommands(program as unknown as Command, run);

  // ---- address rewriting: canonical, masquerade, bcc, SRS (cli/src/rewrite.ts)
  registerRewriteCommands(program as unknown as Command, run);

  return program as unknown as Command;
}
