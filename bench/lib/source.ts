// Postfix's smtp-source as the load. With -v it prints every reply it reads
// ("<<< 250 2.0.0 Ok: queued as ID"); the bench timestamps those lines as
// they arrive, which gives the client-observed acceptance time of each queue
// id, for Postfix and Tern alike. -A keeps it going after a refusal, and the
// refusals are counted.
import { performance } from 'node:perf_hooks';
import { start } from './procs';

export const SMTP_SOURCE = '/usr/sbin/smtp-source';

export interface SourceResult {
  sent: number;
  accepted: number;
  refused: number;
  refusals: Record<string, number>;
  wallMs: number;
  startedAt: number;
  /** queue id -> epoch ms (fractional) when the 250 was read */
  acceptedAt: Map<string, number>;
  exitCode: number | null;
  stderrTail: string;
}

export interface SourceOptions {
  host: string;
  port: number;
  sessions: number;
  messages: number;
  size: number;
  verbose: boolean; // per-message acceptance times
  reuse?: boolean; // -d: several messages per connection
  timeoutMs: number;
  onStart?: (pid: number) => void;
}

const now = (): number => performance.timeOrigin + performance.now();

export async function runSource(o: SourceOptions): Promise<SourceResult> {
  const args = ['-A', '-s', String(o.sessions), '-m', String(o.messages), '-l', String(o.size)];
  if (o.verbose) args.push('-v');
  if (o.reuse) args.push('-d');
  args.push('-M', 'client.bench.test', '-f', 'sender@client.bench.test', '-t', 'rcpt@sink.test', `${o.host}:${o.port}`);
  const acceptedAt = new Map<string, number>();
  const refusals: Record<string, number> = {};
  let refused = 0;
  let tail = '';
  let last = '';
  const startedAt = now();
  const child = start(SMTP_SOURCE, args, { label: 'smtp-source', stdio: ['ignore', 'ignore', 'pipe'] });
  if (child.pid) o.onStart?.(child.pid);
  child.stderr!.setEncoding('latin1');
  child.stderr!.on('data', (chunk: string) => {
    const t = now();
    const text = tail + chunk;
    const lines = text.split('\n');
    tail = lines.pop() ?? '';
    for (const line of lines) {
      const i = line.indexOf('<<< ');
      if (i < 0) {
        if (!line.includes(': ')) continue;
        if (/fatal|warning|error/i.test(line)) last = line;
        continue;
      }
      const reply = line.slice(i + 4);
      const m = /queued as (\S+)/.exec(reply);
      if (m && reply.startsWith('2')) {
        acceptedAt.set(m[1]!, t);
      } else if (/^[45]\d\d/.test(reply)) {
        refused++;
        const k = reply.slice(0, 40);
        refusals[k] = (refusals[k] ?? 0) + 1;
      }
    }
  });
  const timer = setTimeout(() => {
    last = `smtp-source: killed after ${o.timeoutMs} ms`;
    child.kill('SIGKILL');
  }, o.timeoutMs);
  const exitCode = await child.exited;
  clearTimeout(timer);
  const wallMs = now() - startedAt;
  return {
    sent: o.messages,
    accepted: o.verbose ? acceptedAt.size : exitCode === 0 ? o.messages : 0,
    refused,
    refusals,
    wallMs,
    startedAt,
    acceptedAt,
    exitCode,
    stderrTail: last,
  };
}
