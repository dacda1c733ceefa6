// A private Postfix instance as a store-and-forward relay: its own
// config_directory, queue_directory and data_directory under the run's temp
// dir, listening on one loopback address, relaying everything from
// 127.0.0.0/8 to the sink ([host]:port as relayhost), no local delivery.
// Everything else is Postfix's default: durable queue (fsync), process and
// concurrency limits, connection cache. Runs with `postfix start-fg`, so the
// master is our descendant; logs go to a file through postlogd
// (maillog_file).
import fs from 'node:fs';
import path from 'node:path';
import { start, stopProcess, readStat, type Root } from './procs';
import { run, runOk, waitFor, waitTcp } from './util';
import type { Mta, MtaStartOptions } from './mta';

const QUEUES = ['maildrop', 'incoming', 'active', 'deferred', 'hold'];

export class PostfixMta implements Mta {
  readonly name = 'postfix';
  readonly host: string;
  readonly port: number;
  private dir = '';
  private child?: ReturnType<typeof start>;
  private masterPid = 0;

  constructor(host = '127.0.0.20', port = 2525) {
    this.host = host;
    this.port = port;
  }

  get configDir(): string {
    return path.join(this.dir, 'etc');
  }
  get queueDir(): string {
    return path.join(this.dir, 'spool');
  }
  get logFile(): string {
    return path.join(this.dir, 'maillog');
  }

  async start(o: MtaStartOptions): Promise<void> {
    this.dir = path.join(o.workDir, 'postfix');
    fs.rmSync(this.dir, { recursive: true, force: true });
    for (const d of ['etc', 'spool', 'data']) fs.mkdirSync(path.join(this.dir, d), { recursive: true });
    fs.chmodSync(this.dir, 0o755);
    await runOk('chown', ['postfix', path.join(this.dir, 'data')]);
    const mainCf = [
      'compatibility_level = 3.6',
      `queue_directory = ${this.queueDir}`,
      `data_directory = ${path.join(this.dir, 'data')}`,
      'command_directory = /usr/sbin',
      'daemon_directory = /usr/lib/postfix/sbin',
      'meta_directory = /etc/postfix',
      'shlib_directory = /usr/lib/postfix',
      'mail_owner = postfix',
      'setgid_group = postdrop',
      'syslog_name = postfix-bench',
      `maillog_file = ${this.logFile}`,
      `maillog_file_prefixes = ${o.workDir}`,
      'myhostname = relay.bench.test',
      'mydomain = bench.test',
      'myorigin = $mydomain',
      'mydestination =',
      'local_recipient_maps =',
      'local_transport = error:local delivery is disabled',
      'alias_maps =',
      'alias_database =',
      // inet_interfaces must name a configured interface; the smtpd below
      // binds its own address explicitly in master.cf.
      'inet_interfaces = 127.0.0.1',
      'inet_protocols = ipv4',
      'mynetworks = 127.0.0.0/8',
      'smtpd_relay_restrictions = permit_mynetworks, reject',
      `relayhost = [${o.sinkHost}]:${o.sinkPort}`,
      'smtp_tls_security_level = none',
      'smtpd_tls_security_level = none',
      'biff = no',
      '',
    ].join('\n');
    fs.writeFileSync(path.join(this.configDir, 'main.cf'), mainCf);
    // Debian's master.cf minus chroot (a private queue dir has no chroot
    // files) and minus the services a relay never uses.
    const masterCf = [
      `${this.host}:${this.port} inet n - n - - smtpd`,
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
      'postlog   unix-dgram n  -       n       -       1       postlogd',
      '',
    ].join('\n');
    fs.writeFileSync(path.join(this.configDir, 'master.cf'), masterCf);
    const check = await run('postfix', ['-c', this.configDir, 'check']);
    if (check.code !== 0) throw new Error(`postfix check failed (see ${this.logFile}): ${check.stderr}`);
    const stop = async (): Promise<void> => {
      await run('postfix', ['-c', this.configDir, 'stop']);
    };
    this.child = start('postfix', ['-c', this.configDir, 'start-fg'], {
      label: 'postfix',
      logFile: path.join(this.dir, 'start-fg.log'),
      stop,
    });
    const pidFile = path.join(this.queueDir, 'pid', 'master.pid');
    await waitFor(
      'postfix master',
      () => {
        try {
          const pid = Number(fs.readFileSync(pidFile, 'utf8').trim());
          if (pid && readStat(pid)) {
            this.masterPid = pid;
            return true;
          }
        } catch {
          /* not yet */
        }
        return false;
      },
      15_000,
      100,
    );
    await waitTcp(this.host, this.port, 10_000);
  }

  roots(): Root[] {
    return [{ pid: this.masterPid, group: 'postfix', name: 'master', reaps: true }];
  }

  /** Messages still in Postfix's queue: files under maildrop, incoming, active, deferred, hold. */
  async queued(): Promise<number> {
    let n = 0;
    const walk = (d: string): void => {
      let ents: fs.Dirent[];
      try {
        ents = fs.readdirSync(d, { withFileTypes: true });
      } catch {
        return;
      }
      for (const e of ents) {
        if (e.isDirectory()) walk(path.join(d, e.name));
        else n++;
      }
    };
    for (const q of QUEUES) walk(path.join(this.queueDir, q));
    return n;
  }

  queueIdOf(receivedIds: string[]): string | undefined {
    return receivedIds[0];
  }

  /**
   * Postfix's own view, for cross-checking: per delivered queue id,
   * delay - delays.a (time after the queue manager took the message, which
   * is right after the 250 to the client), from the smtp "status=sent" lines.
   */
  async serverLatencies(): Promise<Map<string, number>> {
    const out = new Map<string, number>();
    let text = '';
    try {
      text = fs.readFileSync(this.logFile, 'utf8');
    } catch {
      return out;
    }
    const re = /postfix-bench\/smtp\[\d+\]: (\w+): to=.*?delay=([\d.]+), delays=([\d.]+)\/[\d.]+\/[\d.]+\/[\d.]+, .*status=sent/g;
    for (const m of text.matchAll(re)) {
      out.set(m[1]!, (Number(m[2]) - Number(m[3])) * 1000);
    }
    return out;
  }

  logTail(): string {
    try {
      return fs.readFileSync(this.logFile, 'utf8').split('\n').filter((l) => /warning|fatal|error|panic/.test(l)).slice(-10).join('\n');
    } catch {
      return '';
    }
  }

  async stop(): Promise<void> {
    if (this.child) await stopProcess(this.child, 15_000);
    this.child = undefined;
  }
}
