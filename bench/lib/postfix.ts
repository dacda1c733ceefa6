// A private Postfix instance as a store-and-forward relay, laid out by
// @tern/devkit's writePostfixInstance (its own config_directory,
// queue_directory and data_directory under the run's temp dir, smtpd on one
// loopback address, no local delivery, no chroot, the log in a file through
// postlogd): relays everything from 127.0.0.0/8 to the sink ([host]:port as
// relayhost). Everything else is Postfix's default: durable queue (fsync),
// process and concurrency limits, connection cache. Runs with
// `postfix start-fg`, so the master is our descendant.
import fs from 'node:fs';
import path from 'node:path';
import { postfixInstancePaths, writePostfixInstance } from '@tern/devkit';
import { start, stopProcess, readStat, type Root } from './procs';
import { run, waitFor, waitTcp } from './util';
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
    return postfixInstancePaths(this.dir).configDir;
  }
  get queueDir(): string {
    return postfixInstancePaths(this.dir).queueDir;
  }
  get logFile(): string {
    return postfixInstancePaths(this.dir).logFile;
  }

  async start(o: MtaStartOptions): Promise<void> {
    this.dir = path.join(o.workDir, 'postfix');
    fs.rmSync(this.dir, { recursive: true, force: true });
    await writePostfixInstance({
      dir: this.dir,
      smtpdHost: this.host,
      smtpdPort: this.port,
      syslogName: 'postfix-bench',
      myhostname: 'relay.bench.test',
      mydomain: 'bench.test',
      maillogFilePrefixes: o.workDir,
      // The relay: everything from loopback goes to the sink.
      mainCf: [
        'myorigin = $mydomain',
        'mynetworks = 127.0.0.0/8',
        'smtpd_relay_restrictions = permit_mynetworks, reject',
        `relayhost = [${o.sinkHost}]:${o.sinkPort}`,
        'smtpd_tls_security_level = none',
      ],
    });
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
