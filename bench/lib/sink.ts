// Postfix's smtp-sink as the remote MX. `-c` prints running counters
// ("sess=N quit=N mesg=N", \r-separated) on stdout, which is how the bench
// knows when every message has arrived. With a dump directory (`-d`, on
// tmpfs) each message is also written to its own file; the file's mtime is
// the moment the sink received the final "." (tmpfs timestamps are coarse:
// a few milliseconds), and its headers say which message it was.
import fs from 'node:fs';
import path from 'node:path';
import { start, stopProcess } from './procs';
import { waitTcp } from './util';

export const SMTP_SINK = '/usr/sbin/smtp-sink';

export interface Delivered {
  /** Message-Id header of the original message (smtp-source numbers them) */
  messageId: string;
  /** "id X" of every Received header except the sink's own, newest first */
  receivedIds: string[];
  /** mtime of the dump file, epoch ms (fractional) */
  atMs: number;
}

export class Sink {
  messages = 0;
  sessions = 0;
  child?: ReturnType<typeof start>;
  private tail = '';

  constructor(
    readonly host: string,
    readonly port: number,
    readonly dumpDir: string | undefined,
  ) {}

  async start(): Promise<void> {
    const args = ['-c', '-u', 'nobody'];
    if (this.dumpDir) {
      fs.mkdirSync(this.dumpDir, { recursive: true });
      fs.chmodSync(this.dumpDir, 0o777);
      args.push('-d', path.join(this.dumpDir, 'm.'));
    }
    // -m: connections handled at once (both MTAs stay far below it).
    args.push('-m', '512', `${this.host}:${this.port}`, '1024');
    this.child = start(SMTP_SINK, args, { label: 'smtp-sink', stdio: ['ignore', 'pipe', 'pipe'] });
    this.child.stdout!.setEncoding('latin1');
    this.child.stdout!.on('data', (chunk: string) => {
      const text = this.tail + chunk;
      const parts = text.split(/[\r\n]/);
      this.tail = parts.pop() ?? '';
      for (let i = parts.length - 1; i >= 0; i--) {
        const m = /sess=(\d+)\s+quit=\d+\s+mesg=(\d+)/.exec(parts[i]!);
        if (m) {
          this.sessions = Number(m[1]);
          this.messages = Number(m[2]);
          break;
        }
      }
    });
    this.child.stderr!.on('data', (d: Buffer) => process.stderr.write(`smtp-sink: ${d.toString()}`));
    await waitTcp(this.host, this.port, 10_000);
  }

  async stop(): Promise<void> {
    if (this.child) await stopProcess(this.child, 3000);
  }

  /**
   * Reads (and deletes) dumped messages. Unless `all`, only files untouched
   * for `settleMs` (so never one still being written).
   */
  collect(all: boolean, settleMs = 2000): Delivered[] {
    if (!this.dumpDir) return [];
    const out: Delivered[] = [];
    const now = Date.now();
    let names: string[];
    try {
      names = fs.readdirSync(this.dumpDir);
    } catch {
      return out;
    }
    const buf = Buffer.alloc(16384);
    for (const name of names) {
      const file = path.join(this.dumpDir, name);
      let st: fs.BigIntStats;
      try {
        st = fs.statSync(file, { bigint: true });
      } catch {
        continue;
      }
      const atMs = Number(st.mtimeNs / 1000n) / 1000;
      if (!all && now - atMs < settleMs) continue;
      const fd = fs.openSync(file, 'r');
      const n = fs.readSync(fd, buf, 0, buf.length, 0);
      fs.closeSync(fd);
      fs.rmSync(file, { force: true });
      const head = buf.subarray(0, n).toString('latin1').split(/\r?\n\r?\n/)[0] ?? '';
      out.push(parseHead(head, atMs));
    }
    return out;
  }

  clearDump(): void {
    if (!this.dumpDir) return;
    for (const name of fs.readdirSync(this.dumpDir)) fs.rmSync(path.join(this.dumpDir, name), { force: true });
  }
}

export function parseHead(head: string, atMs: number): Delivered {
  // unfold
  const lines = head.replace(/\r?\n[ \t]+/g, ' ').split(/\r?\n/);
  let messageId = '';
  const receivedIds: string[] = [];
  for (const line of lines) {
    const colon = line.indexOf(':');
    if (colon < 0) continue;
    const name = line.slice(0, colon).toLowerCase();
    const value = line.slice(colon + 1).trim();
    if (name === 'message-id' && !messageId) messageId = value.replace(/^<|>$/g, '');
    else if (name === 'received' && !/\(smtp-sink\)/.test(value)) {
      const m = /\bid\s+([^\s;]+)/i.exec(value);
      if (m) receivedIds.push(m[1]!);
    }
  }
  return { messageId, receivedIds, atMs };
}
