// `tern dkim ...`: DKIM signing keys through the admin API (policy stores
// them, the private key sealed; delivery signs with the active ones). Every
// command that makes a key prints the TXT record to publish.
import fs from 'node:fs';
import { Option, type Command } from '@commander-js/extra-typings';
import {
  ActivateDkimKeyResponse,
  DkimAlgorithm,
  type DkimKey,
  DkimKeyState,
  GenerateDkimKeyResponse,
  ImportDkimKeyResponse,
  ListDkimKeysResponse,
  RetireDkimKeyResponse,
  RotateDkimKeyResponse,
} from '@tern/proto';
import type { AdminApi } from './client';
import { CliError, EXIT, fileProblem } from './errors';
import { enumName, json, table } from './format';
import { parseDuration, UsageError } from './requests';

interface DkimCtx {
  api: AdminApi;
  json: boolean;
  out(text: string): void;
  io: { now(): Date };
}

type Run = <A extends unknown[]>(fn: (ctx: DkimCtx, ...args: A) => Promise<void>) => (...args: A) => Promise<void>;

const algorithmName = (a: DkimAlgorithm) => enumName(DkimAlgorithm, 'DKIM_ALGORITHM_', a);
const stateName = (s: DkimKeyState) => enumName(DkimKeyState, 'DKIM_KEY_STATE_', s);

function algorithmOf(value: string | undefined): DkimAlgorithm {
  if (value === undefined) return DkimAlgorithm.DKIM_ALGORITHM_UNSPECIFIED;
  if (value === 'rsa') return DkimAlgorithm.DKIM_ALGORITHM_RSA;
  if (value === 'ed25519') return DkimAlgorithm.DKIM_ALGORITHM_ED25519;
  throw new UsageError(`--algorithm: "${value}" is not rsa or ed25519`);
}

function bitsOf(value: string | undefined): number {
  if (value === undefined) return 0;
  const n = Number(value);
  if (!Number.isInteger(n) || n <= 0 || n > 65536) throw new UsageError(`--bits: "${value}" is not 2048, 3072 or 4096`);
  return n;
}

function afterOf(value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const s = parseDuration(value, '--after');
  if (s > 90 * 86400) throw new UsageError(`--after: "${value}" is more than 90 days`);
  return s;
}

/**
 * `--key-file` is also the global option of the mTLS client key, and
 * commander gives a program option to the program wherever it stands: after
 * the `dkim` command the operator means the private key, so main renames it to
 * this hidden option first (dkimKeyFileArgs).
 */
const DKIM_KEY_FILE = '--dkim-key-file';

/** Options of the program that take a value (skipped to find the command). */
const GLOBAL_VALUE_OPTIONS = new Set(['-s', '--server', '-t', '--token', '--token-file', '--ca-file', '--cert-file', '--key-file', '--tls-server-name', '--timeout']);

/** argv with `--key-file` after the `dkim` command renamed to the command's own option. */
export function dkimKeyFileArgs(argv: string[]): string[] {
  const out = [...argv];
  let i = 2;
  while (i < out.length && out[i]!.startsWith('-') && out[i] !== '--') i += GLOBAL_VALUE_OPTIONS.has(out[i]!) ? 2 : 1;
  if (out[i] !== 'dkim') return out;
  for (let j = i + 1; j < out.length && out[j] !== '--'; j++) {
    if (out[j] === '--key-file') out[j] = DKIM_KEY_FILE;
    else if (out[j]!.startsWith('--key-file=')) out[j] = `${DKIM_KEY_FILE}=${out[j]!.slice('--key-file='.length)}`;
  }
  return out;
}

/** --key-file as --help shows it; its value arrives in the hidden option (keyFileValue). */
const keyFileHelp = (description: string) => new Option('--key-file <file>', description);
const keyFileValue = () => new Option(`${DKIM_KEY_FILE} <file>`).hideHelp();

function readKeyFile(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new UsageError(`--key-file: cannot read ${file} (${fileProblem(err)}): give the private key's PEM file`);
  }
}

/**
 * The zone-file line of a key's record, the value split into strings of at
 * most 255 characters (a TXT string's limit; resolvers join them).
 */
export function txtRecord(k: Pick<DkimKey, 'dnsName' | 'dnsValue'>): string {
  const parts = k.dnsValue.match(/.{1,255}/g) ?? [''];
  return `${k.dnsName} IN TXT ${parts.map((p) => `"${p}"`).join(' ')}\n`;
}

function when(d: Date | undefined, now: Date): string {
  if (!d) return '-';
  return `${d.toISOString().replace(/\.\d+Z$/, 'Z')}${d > now ? ` (in ${Math.round((d.getTime() - now.getTime()) / 3600_000)}h)` : ''}`;
}

export function formatDkimKeys(keys: DkimKey[], now: Date): string {
  if (!keys.length) return 'No DKIM keys.\n';
  return table(
    ['DOMAIN', 'SELECTOR', 'ALGORITHM', 'STATE', 'SIGNS FROM', 'RETIRED', 'BY'],
    keys.map((k) => [
      k.domain,
      k.selector,
      `${algorithmName(k.algorithm)}${k.bits ? ` ${k.bits}` : ''}`,
      stateName(k.state),
      k.state === DkimKeyState.DKIM_KEY_STATE_RETIRED && !k.retiredAt ? '-' : when(k.activateAt, now),
      k.retiredAt ? when(k.retiredAt, now) : '-',
      k.createdBy,
    ]),
  );
}

/** What a new key means, then its record. */
function describeNew(k: DkimKey, now: Date): string {
  const what = `DKIM key ${k.selector} of ${k.domain} (${algorithmName(k.algorithm)}${k.bits ? ` ${k.bits}` : ''})`;
  const state =
    k.state === DkimKeyState.DKIM_KEY_STATE_ACTIVE
      ? 'signs now. Publish its record before receivers check it:'
      : `is published, not signing yet: it signs from ${when(k.activateAt, now)} (or tern dkim activate ${k.domain} ${k.selector}). Publish its record now:`;
  return `${what} ${state}\n${txtRecord(k)}`;
}

export function registerDkimCommands(program: Command, run: Run): void {
  const dkim = program
    .command('dkim')
    .description('DKIM signing keys: delivery signs mail whose From: domain (or a parent) has an active key; the private key is stored sealed and never shown');

  dkim
    .command('generate')
    .description("make a domain's first key (per algorithm) and print the TXT record to publish; it signs at once unless --after")
    .argument('<domain>', 'signing domain (d=)')
    .argument('<selector>', 'selector (s=), e.g. s2026; never reuse one')
    .addOption(new Option('--algorithm <algorithm>', 'rsa or ed25519 (default rsa)').choices(['rsa', 'ed25519']))
    .option('--bits <n>', 'RSA key size: 2048 (default), 3072, 4096')
    .option('--after <duration>', 'start signing only after this long (e.g. 48h), the record published meanwhile')
    .action(
      run(async (ctx, domain: string, selector: string, o: { algorithm?: string; bits?: string; after?: string }) => {
        const res = await ctx.api.generateDkimKey({ domain, selector, algorithm: algorithmOf(o.algorithm), bits: bitsOf(o.bits), afterSeconds: afterOf(o.after) ?? 0 });
        ctx.out(ctx.json ? json(GenerateDkimKeyResponse.toJSON(res)) : describeNew(res.key!, ctx.io.now()));
      }),
    );

  dkim
    .command('import')
    .description("store an existing private key (PEM: RSA of 1024 bits or more, or Ed25519) as a domain's key; prints the TXT record")
    .argument('<domain>', 'signing domain (d=)')
    .argument('<selector>', 'selector (s=) its record is published under')
    .addOption(keyFileHelp('the private key in PEM (PKCS#8 or PKCS#1, unencrypted); required'))
    .addOption(keyFileValue())
    .option('--after <duration>', 'start signing only after this long')
    .action(
      run(async (ctx, domain: string, selector: string, o: { dkimKeyFile?: string; after?: string }) => {
        if (!o.dkimKeyFile) throw new UsageError('--key-file is required: the private key in PEM, e.g. tern dkim import example.com s2026 --key-file key.pem');
        const res = await ctx.api.importDkimKey({ domain, selector, privateKeyPem: readKeyFile(o.dkimKeyFile), afterSeconds: afterOf(o.after) ?? 0 });
        ctx.out(ctx.json ? json(ImportDkimKeyResponse.toJSON(res)) : describeNew(res.key!, ctx.io.now()));
      }),
    );

  dkim
    .command('ls')
    .alias('list')
    .description('keys: active (signing), published (waiting to sign), and with --all retired ones')
    .argument('[domain]', 'only this domain')
    .option('--all', 'retired keys too')
    .option('--records', 'print the TXT record of each key instead of the table')
    .action(
      run(async (ctx, domain: string | undefined, o: { all?: boolean; records?: boolean }) => {
        const res = await ctx.api.listDkimKeys({ domain: domain ?? '', includeRetired: Boolean(o.all) });
        if (ctx.json) ctx.out(json(ListDkimKeysResponse.toJSON(res)));
        else if (o.records) ctx.out(res.keys.filter((k) => k.state !== DkimKeyState.DKIM_KEY_STATE_RETIRED).map(txtRecord).join(''));
        else ctx.out(formatDkimKeys(res.keys, ctx.io.now()));
      }),
    );

  dkim
    .command('rotate')
    .description(
      'replace a domain\'s active key: the new selector is published first (its TXT record printed) and signs after --after (48h by default, for the record to reach resolvers) or "tern dkim activate"; the old key is retired then',
    )
    .argument('<domain>', 'signing domain')
    .argument('<selector>', 'the new key\'s selector (a new one)')
    .addOption(new Option('--algorithm <algorithm>', 'which active key to replace when the domain has an RSA and an Ed25519 one').choices(['rsa', 'ed25519']))
    .option('--bits <n>', 'RSA size of the new key (default: as the current one)')
    .option('--after <duration>', 'when the new key starts signing (default 48h; 0 switches now)')
    .addOption(keyFileHelp('import this private key (PEM) instead of generating one'))
    .addOption(keyFileValue())
    .action(
      run(async (ctx, domain: string, selector: string, o: { algorithm?: string; bits?: string; after?: string; dkimKeyFile?: string }) => {
        const res = await ctx.api.rotateDkimKey({
          domain,
          selector,
          algorithm: algorithmOf(o.algorithm),
          bits: bitsOf(o.bits),
          afterSeconds: afterOf(o.after),
          privateKeyPem: o.dkimKeyFile ? readKeyFile(o.dkimKeyFile) : '',
        });
        if (ctx.json) {
          ctx.out(json(RotateDkimKeyResponse.toJSON(res)));
          return;
        }
        const k = res.key!;
        const replaced = res.current ? ` It replaces ${res.current.selector}${res.current.state === DkimKeyState.DKIM_KEY_STATE_RETIRED ? ', retired now' : ', retired when the new key signs'}.` : '';
        ctx.out(`${describeNew(k, ctx.io.now()).replace(/\n/, `${replaced}\n`)}`);
      }),
    );

  dkim
    .command('activate')
    .description('make a published key sign now (once its TXT record is visible), retiring the key it replaces')
    .argument('<domain>', 'signing domain')
    .argument('<selector>', 'the published key\'s selector')
    .action(
      run(async (ctx, domain: string, selector: string) => {
        const res = await ctx.api.activateDkimKey({ domain, selector });
        if (ctx.json) ctx.out(json(ActivateDkimKeyResponse.toJSON(res)));
        else ctx.out(`DKIM key ${selector} of ${domain} signs now${res.retired ? `; ${res.retired.selector} is retired (leave its record published for a few days: mail signed with it is still in transit)` : ''}.\n`);
      }),
    );

  dkim
    .command('retire')
    .description('stop signing with a key and erase its private key (its TXT record can go a few days later)')
    .argument('<domain>', 'signing domain')
    .argument('<selector>', 'the key\'s selector')
    .action(
      run(async (ctx, domain: string, selector: string) => {
        const res = await ctx.api.retireDkimKey({ domain, selector });
        if (!res.key) throw new CliError(`no DKIM key ${selector} for ${domain}`, EXIT.NOT_FOUND);
        ctx.out(ctx.json ? json(RetireDkimKeyResponse.toJSON(res)) : `DKIM key ${selector} of ${domain} retired.\n`);
      }),
    );
}
