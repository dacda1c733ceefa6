// A private rspamd (Debian's package) for tests: its own configuration,
// run and database directories under a temp dir, one process tree of our
// own (`rspamd -f`), only the proxy worker in milter mode with self_scan (no
// normal worker, no controller, no redis), on a 127.0.0.x port. DNS goes to a
// loopback port where nothing answers, so nothing leaves the machine;
// milter_headers adds X-Spamd-Result, X-Rspamd-Server and X-Spam-Status to
// the messages it passes. GTUBE is refused by rspamd's core ("554 5.7.1 Gtube
// pattern").
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

export interface RspamdHandle {
  /** host:port of the milter proxy. */
  address: string;
  dir: string;
  logTail(lines?: number): string;
  stop(): Promise<void>;
}

export function rspamdAvailable(): boolean {
  return fs.existsSync('/usr/bin/rspamd');
}

function config(dir: string, host: string, port: number): string {
  return `
.include "$CONFDIR/actions.conf"
modules { path = "\${PLUGINSDIR}"; }
options {
  pidfile = "${dir}/rspamd.pid";
  filters = "";
  dns { nameserver = ["127.0.0.1:9"]; timeout = 1s; retransmits = 1; }
  local_addrs = [];
  control_socket = "${dir}/rspamd.sock mode=0600";
  cache_file = "${dir}/symbols.cache";
  dynamic_conf = "${dir}/dynamic";
  history_file = "${dir}/history";
  stats_file = "${dir}/stats.ucl";
  hs_cache_dir = "${dir}/";
  tempdir = "${dir}";
  url_tld = "\${SHAREDIR}/effective_tld_names.dat";
}
logging { type = "file"; filename = "${dir}/rspamd.log"; level = "info"; }
worker "rspamd_proxy" {
  bind_socket = "${host}:${port}";
  milter = yes;
  timeout = 120s;
  count = 1;
  upstream "local" { default = yes; self_scan = yes; }
}
milter_headers {
  use = ["x-spamd-result", "x-rspamd-server", "x-spam-status"];
  skip_local = false;
  skip_authenticated = false;
}
`;
}

/** Starts rspamd and resolves once its proxy accepts connections (startup compiles its TLD list: allow a minute on a busy machine). */
export async function startRspamd(opts: { host: string; port: number; startTimeoutMs?: number }): Promise<RspamdHandle> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-rspamd-'));
  const conf = path.join(dir, 'rspamd.conf');
  fs.writeFileSync(conf, config(dir, opts.host, opts.port));
  const out = fs.openSync(path.join(dir, 'stdout.log'), 'a');
  // -f: stays in the foreground, so the main process is our child; -i: allowed to run as root (CI containers).
  const child: ChildProcess = spawn('/usr/bin/rspamd', ['-f', '-i', '-c', conf], { stdio: ['ignore', out, out] });
  fs.closeSync(out);
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const logTail = (lines = 30) => {
    const read = (f: string) => (fs.existsSync(f) ? fs.readFileSync(f, 'utf8') : '');
    return `${read(path.join(dir, 'stdout.log'))}${read(path.join(dir, 'rspamd.log'))}`.split('\n').slice(-lines).join('\n');
  };
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      // The main process stops its workers on SIGTERM.
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(timer);
    }
    fs.rmSync(dir, { recursive: true, force: true });
  };
  const deadline = Date.now() + (opts.startTimeoutMs ?? 90_000);
  for (;;) {
    if (child.exitCode !== null) {
      const tail = logTail();
      await stop();
      throw new Error(`rspamd exited (${child.exitCode}) before listening:\n${tail}`);
    }
    const up = await new Promise<boolean>((resolve) => {
      const s = net.connect({ host: opts.host, port: opts.port }, () => {
        s.destroy();
        resolve(true);
      });
      s.on('error', () => resolve(false));
    });
    if (up) break;
    if (Date.now() > deadline) {
      const tail = logTail();
      await stop();
      throw new Error(`rspamd did not listen on ${opts.host}:${opts.port} in time:\n${tail}`);
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  return { address: `${opts.host}:${opts.port}`, dir, logTail, stop };
}
