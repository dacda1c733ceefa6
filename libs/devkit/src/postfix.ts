// Private Postfix instances: their own config_directory, queue_directory and
// data_directory under one directory, smtpd on one loopback address and port,
// no local delivery, no chroot (a private queue directory has no chroot
// files), Debian's daemon and meta directories, the log in a file through
// postlogd (maillog_file). writePostfixInstance writes that layout and the
// configuration every instance shares; its callers add their role:
//
// - startPostfix (below), for tests: a receiving MTA. Mail for the given
//   domains is delivered by the `virtual` agent into Maildirs in the instance
//   directory (unknown recipients refused at RCPT with 550 5.1.1, as Postfix
//   does), optional STARTTLS with a self-signed certificate. Runs with
//   `postfix start-fg`, so the master is our child.
// - bench/lib/postfix.ts (PostfixMta), for the benchmark: a store-and-forward
//   relay from 127.0.0.0/8 to the sink (relayhost).
//
//   const pf = await startPostfix({ host: '127.0.4.60', port, mailboxes: ['bob@dest.test'] });
//   ... deliver to pf.host:pf.port ...
//   const mails = await pf.waitForMail('bob@dest.test', 1);
//   await pf.stop();
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { selfSignedCert } from './tls';

export interface PostfixOptions {
  host: string;
  port: number;
  /** Addresses that have a mailbox; their domains are Postfix's virtual mailbox domains. */
  mailboxes: string[];
  /** Offer STARTTLS with a self-signed certificate for `hostname`. */
  starttls?: boolean;
  /** myhostname; default "postfix.test". */
  hostname?: string;
  /** Extra main.cf lines. */
  mainCf?: string[];
  /** Parent of the instance directory; default os.tmpdir(). */
  baseDir?: string;
}

export interface PostfixHandle {
  host: string;
  port: number;
  dir: string;
  configDir: string;
  logFile: string;
  /** Messages delivered to `address` (raw, as stored in its Maildir/new). */
  mail(address: string): Buffer[];
  waitForMail(address: string, n: number, timeoutMs?: number): Promise<Buffer[]>;
  /** The last lines of the mail log (for failure messages). */
  logTail(lines?: number): string;
  stop(): Promise<void>;
}

/** Is Postfix installed (Debian package postfix)? */
export function postfixAvailable(): boolean {
  return fs.existsSync('/usr/sbin/postfix') && fs.existsSync('/usr/lib/postfix/sbin/master');
}

function run(cmd: string, args: string[]): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { encoding: 'utf8' }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : 1) : 0, out: `${stdout}${stderr}` });
    });
  });
}

async function uidGid(user: string): Promise<{ uid: number; gid: number }> {
  const u = await run('id', ['-u', user]);
  const g = await run('id', ['-g', user]);
  if (u.code !== 0 || g.code !== 0) throw new Error(`user ${user} not found (is postfix installed?)`);
  return { uid: Number(u.out.trim()), gid: Number(g.out.trim()) };
}

export interface PostfixInstanceOptions {
  /** The instance directory (created if missing): etc/, spool/, data/ and the log go there. */
  dir: string;
  /** Where smtpd listens (master.cf). */
  smtpdHost: string;
  smtpdPort: number;
  /** syslog_name: the program prefix of every log line (e.g. "postfix-bench/smtp[123]"). */
  syslogName: string;
  myhostname: string;
  mydomain: string;
  /** maillog_file_prefixes; default the instance directory. */
  maillogFilePrefixes?: string;
  /** The role's main.cf lines (relay or receiving settings, TLS, ...). */
  mainCf?: string[];
  /** The role's master.cf services beyond the common table (e.g. virtual, tlsmgr). */
  masterCf?: string[];
}

export interface PostfixInstancePaths {
  dir: string;
  configDir: string;
  queueDir: string;
  dataDir: string;
  logFile: string;
}

/** Where writePostfixInstance puts things under `dir`. */
export function postfixInstancePaths(dir: string): PostfixInstancePaths {
  return {
    dir,
    configDir: path.join(dir, 'etc'),
    queueDir: path.join(dir, 'spool'),
    dataDir: path.join(dir, 'data'),
    logFile: path.join(dir, 'maillog'),
  };
}

/**
 * Writes a private Postfix instance under `o.dir`: the directories (the data
 * directory owned by postfix), main.cf with the settings every instance
 * shares plus `o.mainCf`, master.cf with Debian's services minus chroot and
 * minus those no instance uses, plus `o.masterCf`. Starts nothing.
 */
export async function writePostfixInstance(o: PostfixInstanceOptions): Promise<PostfixInstancePaths> {
  const p = postfixInstancePaths(o.dir);
  for (const d of [p.configDir, p.queueDir, p.dataDir]) fs.mkdirSync(d, { recursive: true });
  fs.chmodSync(o.dir, 0o755);
  const pf = await uidGid('postfix');
  fs.chownSync(p.dataDir, pf.uid, pf.gid);
  const mainCf = [
    'compatibility_level = 3.6',
    `queue_directory = ${p.queueDir}`,
    `data_directory = ${p.dataDir}`,
    'command_directory = /usr/sbin',
    'daemon_directory = /usr/lib/postfix/sbin',
    'meta_directory = /etc/postfix',
    'shlib_directory = /usr/lib/postfix',
    'mail_owner = postfix',
    'setgid_group = postdrop',
    `syslog_name = ${o.syslogName}`,
    `maillog_file = ${p.logFile}`,
    `maillog_file_prefixes = ${o.maillogFilePrefixes ?? o.dir}`,
    `myhostname = ${o.myhostname}`,
    `mydomain = ${o.mydomain}`,
    'mydestination =',
    'local_recipient_maps =',
    'local_transport = error:local delivery is disabled',
    'alias_maps =',
    'alias_database =',
    // inet_interfaces must name a configured interface; smtpd binds its own
    // address explicitly in master.cf.
    'inet_interfaces = 127.0.0.1',
    'inet_protocols = ipv4',
    'smtp_tls_security_level = none',
    'biff = no',
    ...(o.mainCf ?? []),
    '',
  ].join('\n');
  fs.writeFileSync(path.join(p.configDir, 'main.cf'), mainCf);
  const masterCf = [
    `${o.smtpdHost}:${o.smtpdPort} inet n - n - - smtpd`,
    'pickup    unix  n       -       n       60      1       pickup',
    'cleanup   unix  n       -       n       -       0       cleanup',
    'qmgr      unix  n       -       n       300     1       qmgr',
    'rewrite   unix  -       -       n       -       -       trivial-rewrite',
    'bounce    unix  -       -       n       -       0       bounce',
    'defer     unix  -       -       n       -       0       bounce',
    'trace     unix  -       -       n       -       0       bounce',
    'verify    unix  -       -       n       -       1       verify',
    'flush     unix  n       -       n       1000?   0       flush',
    'proxymap  unix  -       -       n       -       -       proxymap',
    'proxywrite unix -       -       n       -       1       proxymap',
    'smtp      unix  -       -       n       -       -       smtp',
    'relay     unix  -       -       n       -       -       smtp',
    'showq     unix  n       -       n       -       -       showq',
    'error     unix  -       -       n       -       -       error',
    'retry     unix  -       -       n       -       -       error',
    'discard   unix  -       -       n       -       -       discard',
    'anvil     unix  -       -       n       -       1       anvil',
    'scache    unix  -       -       n       -       1       scache',
    ...(o.masterCf ?? []),
    'postlog   unix-dgram n  -       n       -       1       postlogd',
    '',
  ].join('\n');
  fs.writeFileSync(path.join(p.configDir, 'master.cf'), masterCf);
  return p;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

async function waitTcp(host: string, port: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect({ host, port });
      s.once('connect', () => (s.destroy(), resolve(true)));
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`postfix did not listen on ${host}:${port} within ${timeoutMs} ms`);
    await sleep(100);
  }
}

export async function startPostfix(o: PostfixOptions): Promise<PostfixHandle> {
  if (!postfixAvailable()) throw new Error('postfix is not installed (Debian package postfix; scripts/system-deps.sh)');
  const dir = fs.mkdtempSync(path.join(o.baseDir ?? os.tmpdir(), 'tern-postfix-'));
  const { configDir, logFile } = postfixInstancePaths(dir);
  const mailDir = path.join(dir, 'mail');
  const pf = await uidGid('postfix');
  const domains = [...new Set(o.mailboxes.map((a) => a.slice(a.lastIndexOf('@') + 1).toLowerCase()))];
  const hostname = o.hostname ?? 'postfix.test';
  const tlsLines = o.starttls
    ? [
        'smtpd_tls_security_level = may',
        `smtpd_tls_chain_files = ${path.join(configDir, 'tls.key')}, ${path.join(configDir, 'tls.crt')}`,
        'smtpd_tls_received_header = yes',
      ]
    : ['smtpd_tls_security_level = none'];
  await writePostfixInstance({
    dir,
    smtpdHost: o.host,
    smtpdPort: o.port,
    syslogName: 'tern-test-postfix',
    myhostname: hostname,
    mydomain: 'postfix.test',
    mainCf: [
      'mynetworks = 127.0.0.1/32',
      // A receiving MTA: mail for its virtual domains only, from anyone.
      'smtpd_relay_restrictions = reject_unauth_destination',
      'smtpd_recipient_restrictions =',
      `virtual_mailbox_domains = ${domains.join(' ')}`,
      `virtual_mailbox_maps = texthash:${path.join(configDir, 'vmailbox')}`,
      `virtual_mailbox_base = ${mailDir}`,
      `virtual_uid_maps = static:${pf.uid}`,
      `virtual_gid_maps = static:${pf.gid}`,
      'smtputf8_enable = yes',
      'smtpd_banner = $myhostname ESMTP Postfix (tern test)',
      ...tlsLines,
      ...(o.mainCf ?? []),
    ],
    masterCf: [
      'virtual   unix  -       n       n       -       -       virtual',
      'tlsmgr    unix  -       -       n       1000?   1       tlsmgr',
    ],
  });
  fs.mkdirSync(mailDir, { recursive: true });
  fs.chownSync(mailDir, pf.uid, pf.gid);
  // texthash: needs no postmap. One Maildir per address (trailing slash = Maildir).
  fs.writeFileSync(path.join(configDir, 'vmailbox'), o.mailboxes.map((a) => `${a.toLowerCase()} ${a.toLowerCase().replace(/[^a-z0-9.@-]/g, '_')}/\n`).join(''));
  if (o.starttls) {
    const cert = selfSignedCert({ names: [hostname, o.host] });
    fs.writeFileSync(path.join(configDir, 'tls.crt'), cert.cert);
    fs.writeFileSync(path.join(configDir, 'tls.key'), cert.key, { mode: 0o600 });
  }

  const check = await run('postfix', ['-c', configDir, 'check']);
  if (check.code !== 0) throw new Error(`postfix check failed: ${check.out.trim()}`);
  const child: ChildProcess = spawn('postfix', ['-c', configDir, 'start-fg'], { stdio: ['ignore', 'ignore', 'ignore'] });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const logTail = (lines = 20): string => {
    try {
      return fs.readFileSync(logFile, 'utf8').trim().split('\n').slice(-lines).join('\n');
    } catch {
      return '(no log)';
    }
  };
  let stopped = false;
  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    await run('postfix', ['-c', configDir, 'stop']);
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([exited, new Promise<void>((r) => (timer = setTimeout(r, 10_000)))]);
    clearTimeout(timer);
    if (child.exitCode === null) child.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  };
  try {
    await waitTcp(o.host, o.port, 15_000);
  } catch (err) {
    const tail = logTail();
    await stop();
    throw new Error(`${(err as Error).message}\n${tail}`, { cause: err });
  }

  const mail = (address: string): Buffer[] => {
    const box = path.join(mailDir, address.toLowerCase().replace(/[^a-z0-9.@-]/g, '_'), 'new');
    let files: string[];
    try {
      files = fs.readdirSync(box).sort();
    } catch {
      return [];
    }
    return files.map((f) => fs.readFileSync(path.join(box, f)));
  };
  return {
    host: o.host,
    port: o.port,
    dir,
    configDir,
    logFile,
    mail,
    async waitForMail(address, n, timeoutMs = 15_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const got = mail(address);
        if (got.length >= n) return got;
        if (Date.now() > deadline) throw new Error(`postfix: ${got.length} of ${n} messages for ${address} after ${timeoutMs} ms\n${logTail()}`);
        await sleep(100);
      }
    },
    logTail,
    stop,
  };
}
