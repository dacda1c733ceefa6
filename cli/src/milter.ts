// `tern milter ...`: the content filters (milters) ingress runs at the end of
// data, through the admin API (policy stores them; ingress reads the chain
// every few seconds, so a change applies without a restart).
import { Option, type Command } from '@commander-js/extra-typings';
import { Listener, ListMiltersResponse, type Milter, MilterDefaultAction, PutMilterResponse } from '@tern/proto';
import type { AdminApi } from './client';
import { CliError, EXIT } from './errors';
import { enumName, json, table } from './format';
import { UsageError } from './requests';

interface MilterCtx {
  api: AdminApi;
  json: boolean;
  out(text: string): void;
}

type Run = <A extends unknown[]>(fn: (ctx: MilterCtx, ...args: A) => Promise<void>) => (...args: A) => Promise<void>;

const LISTENERS: Record<string, Listener> = {
  mx: Listener.LISTENER_MX,
  submission: Listener.LISTENER_SUBMISSION,
  submissions: Listener.LISTENER_SUBMISSIONS,
};
const ACTIONS: Record<string, MilterDefaultAction> = {
  tempfail: MilterDefaultAction.MILTER_DEFAULT_ACTION_TEMPFAIL,
  accept: MilterDefaultAction.MILTER_DEFAULT_ACTION_ACCEPT,
  reject: MilterDefaultAction.MILTER_DEFAULT_ACTION_REJECT,
};

const listenerName = (l: Listener) => enumName(Listener, 'LISTENER_', l);
const actionName = (a: MilterDefaultAction) => (a === MilterDefaultAction.MILTER_DEFAULT_ACTION_UNSPECIFIED ? 'tempfail' : enumName(MilterDefaultAction, 'MILTER_DEFAULT_ACTION_', a));

function listenersOf(value: string): Listener[] {
  const out: Listener[] = [];
  for (const part of value.split(',').map((x) => x.trim().toLowerCase()).filter(Boolean)) {
    const l = LISTENERS[part];
    if (l === undefined) throw new UsageError(`--listeners: "${part}" is not mx, submission or submissions`);
    out.push(l);
  }
  if (!out.length) throw new UsageError('--listeners: give at least one of mx, submission, submissions');
  return out;
}

/** Milliseconds from "500ms", "10s", "2m" or a bare number of milliseconds. */
export function parseMs(value: string, option: string): number {
  const m = /^(\d+)(ms|s|m)?$/.exec(value.trim().toLowerCase());
  if (!m) throw new UsageError(`${option}: "${value}" is not a time in ms, s or m (e.g. 500ms, 10s, 5m)`);
  const n = Number(m[1]);
  const ms = m[2] === 's' ? n * 1000 : m[2] === 'm' ? n * 60_000 : n;
  // policy's bound (milters.ts MAX_TIMEOUT_MS); larger numbers would not even fit the API's uint32.
  if (ms > 600_000) throw new UsageError(`${option}: "${value}" is more than 10m (at most 10m; 0 for the default)`);
  return ms;
}

function orderOf(value: string | undefined): number {
  if (value === undefined) return 0;
  const n = Number(value);
  if (!Number.isInteger(n) || Math.abs(n) > 1_000_000) throw new UsageError(`--order: "${value}" is not a whole number (lower runs first)`);
  return n;
}

const seconds = (ms: number) => (ms % 1000 === 0 ? `${ms / 1000}s` : `${ms}ms`);

export function formatMilters(milters: Milter[]): string {
  if (!milters.length) return 'No milters: messages are stored without content filters. Add one with tern milter set <name> <host:port>.\n';
  return table(
    ['ORDER', 'NAME', 'ADDRESS', 'LISTENERS', 'DEFAULT', 'CONNECT', 'COMMAND', 'TOTAL'],
    milters.map((m) => [
      String(m.order),
      m.name,
      m.address,
      m.listeners.map(listenerName).join(','),
      actionName(m.defaultAction),
      seconds(m.connectTimeoutMs),
      seconds(m.commandTimeoutMs),
      seconds(m.totalTimeoutMs),
    ]),
  );
}

export function registerMilterCommands(program: Command, run: Run): void {
  const milter = program
    .command('milter')
    .description('content filters (milter protocol: rspamd, clamav-milter, OpenDKIM) that ingress runs at the end of data, in order; a change applies within seconds');

  milter
    .command('ls')
    .alias('list')
    .description('the milter chain, in the order it runs')
    .action(
      run(async (ctx) => {
        const res = await ctx.api.listMilters({});
        ctx.out(ctx.json ? json(ListMiltersResponse.toJSON(res)) : formatMilters(res.milters));
      }),
    );

  milter
    .command('set')
    .description('add or replace a milter (the whole definition: options left out take their defaults)')
    .argument('<name>', 'its name: letters, digits, ".", "_", "-" (e.g. rspamd)')
    .argument('<address>', 'host:port, [v6]:port or unix:/path/to/socket (e.g. 127.0.0.1:11332, rspamd\'s proxy worker in milter mode)')
    .option('--listeners <list>', 'listeners whose messages it sees: mx, submission, submissions, comma-separated', 'mx')
    .option('--order <n>', 'position in the chain: lower runs first (ties by name)', '0')
    .addOption(new Option('--default-action <action>', 'what a milter that is down, silent or broken means: tempfail (451 4.7.1, the client retries), accept (go on without it), reject (550 5.7.1)').choices(['tempfail', 'accept', 'reject']).default('tempfail'))
    .option('--connect-timeout <time>', 'to open the connection (e.g. 10s)', '10s')
    .option('--command-timeout <time>', 'for each answer (e.g. 30s)', '30s')
    .option('--total-timeout <time>', 'for the whole conversation of one message (e.g. 5m)', '5m')
    .action(
      run(async (ctx, name: string, address: string, o: { listeners: string; order: string; defaultAction: string; connectTimeout: string; commandTimeout: string; totalTimeout: string }) => {
        const res = await ctx.api.putMilter({
          milter: {
            name,
            address,
            listeners: listenersOf(o.listeners),
            order: orderOf(o.order),
            defaultAction: ACTIONS[o.defaultAction]!,
            connectTimeoutMs: parseMs(o.connectTimeout, '--connect-timeout'),
            commandTimeoutMs: parseMs(o.commandTimeout, '--command-timeout'),
            totalTimeoutMs: parseMs(o.totalTimeout, '--total-timeout'),
          },
        });
        const m = res.milter!;
        ctx.out(
          ctx.json
            ? json(PutMilterResponse.toJSON(res))
            : `Milter ${m.name} (${m.address}) saved: runs at order ${m.order} on ${m.listeners.map(listenerName).join(', ')}; if it fails: ${actionName(m.defaultAction)}. Ingress picks it up within seconds (tern milter ls shows the chain).\n`,
        );
      }),
    );

  milter
    .command('rm')
    .alias('remove')
    .description('remove a milter from the chain')
    .argument('<name>', 'its name (tern milter ls)')
    .action(
      run(async (ctx, name: string) => {
        const res = await ctx.api.deleteMilter({ name });
        if (ctx.json) ctx.out(json({ deleted: res.deleted }));
        else if (res.deleted) ctx.out(`Deleted milter ${name}.\n`);
        if (!res.deleted) throw new CliError(`no milter ${name}: nothing deleted (tern milter ls lists them)`, EXIT.NOT_FOUND);
      }),
    );
}
