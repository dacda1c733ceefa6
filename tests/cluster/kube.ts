// The cluster tests' view of the local cluster (`npm run cluster -- up
// --no-release`): kubectl and helm as a user runs them, a port-forward to the
// admin API, an SMTP load with a ledger of every reply, and the pods' own
// /metrics. Everything goes through kubectl, helm, SMTP and the `tern` CLI.
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { repoRoot, type SmtpSink } from '@tern/devkit';
import { RawSmtp, sleep, ternRaw, type AdminTarget, type SmtpReply } from '../ops/helpers';

export { sleep };

/** .tern/cluster/env, written by scripts/cluster/cluster.sh. */
export interface ClusterEnv {
  KUBECONFIG: string;
  KUBECTL: string;
  HELM: string;
  CHART: string;
  VALUES: string;
  NAMESPACE: string;
  RELEASE: string;
  IMAGE_REPOSITORY: string;
  IMAGE_TAG: string;
  ADMIN_TOKEN_FILE: string;
  HOST_ADDR: string;
  SINK_PORT: string;
  NODE_NAME: string;
}

export function clusterEnv(): ClusterEnv {
  const file = path.join(repoRoot(), '.tern', 'cluster', 'env');
  assert.ok(fs.existsSync(file), `${file} is missing: start the cluster first with \`npm run cluster -- up --no-release\` (npm test and npm run test:cluster do)`);
  const env: Record<string, string> = {};
  for (const line of fs.readFileSync(file, 'utf8').split('\n')) {
    const m = /^([A-Z_]+)=(.*)$/.exec(line);
    if (m) env[m[1]!] = m[2]!;
  }
  return env as unknown as ClusterEnv;
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

function run(cmd: string, args: string[], env: ClusterEnv, timeoutMs: number): Promise<RunResult> {
  return new Promise((resolve) => {
    execFile(cmd, args, { env: { ...process.env, KUBECONFIG: env.KUBECONFIG }, timeout: timeoutMs, maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : 1) : 0;
      resolve({ code, stdout: String(stdout), stderr: String(stderr) + (err && code === 1 && !stderr ? err.message : '') });
    });
  });
}

export class Kube {
  constructor(readonly env: ClusterEnv) {}

  /** kubectl ARGS; never throws. */
  kubectlRaw(args: string[], timeoutMs = 120_000): Promise<RunResult> {
    return run(this.env.KUBECTL, args, this.env, timeoutMs);
  }

  async kubectl(...args: string[]): Promise<string> {
    const r = await this.kubectlRaw(args);
    assert.equal(r.code, 0, `kubectl ${args.join(' ')} exited ${r.code}: ${r.stderr}${r.stdout}`);
    return r.stdout;
  }

  async json<T>(...args: string[]): Promise<T> {
    return JSON.parse(await this.kubectl(...args, '-o', 'json')) as T;
  }

  async helm(...args: string[]): Promise<string> {
    const r = await run(this.env.HELM, args, this.env, 15 * 60_000);
    assert.equal(r.code, 0, `helm ${args.join(' ')} exited ${r.code}: ${r.stderr}${r.stdout}`);
    return r.stdout;
  }

  /** Pods of the release (the migration Job's pod aside). */
  async pods(component?: string): Promise<Pod[]> {
    const selector = [`app.kubernetes.io/instance=${this.env.RELEASE}`, component ? `app.kubernetes.io/component=${component}` : 'app.kubernetes.io/component!=migrate'];
    const list = await this.json<{ items: Pod[] }>('-n', this.env.NAMESPACE, 'get', 'pods', '-l', selector.join(','));
    return list.items;
  }

  async serviceIp(name: string): Promise<string> {
    return (await this.kubectl('-n', this.env.NAMESPACE, 'get', 'service', name, '-o', 'jsonpath={.spec.clusterIP}')).trim();
  }

  /** `kubectl port-forward svc/NAME 0:PORT`: the local port, and a stop function. */
  async portForward(service: string, port: number): Promise<{ port: number; stop: () => void }> {
    const child: ChildProcess = spawn(this.env.KUBECTL, ['-n', this.env.NAMESPACE, 'port-forward', `svc/${service}`, `0:${port}`, '--address', '127.0.0.1'], {
      env: { ...process.env, KUBECONFIG: this.env.KUBECONFIG },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    const local = await new Promise<number>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`kubectl port-forward svc/${service} printed no port within 20 s: ${out}`)), 20_000);
      const onData = (d: Buffer) => {
        out += d.toString();
        const m = /Forwarding from 127\.0\.0\.1:(\d+)/.exec(out);
        if (m) {
          clearTimeout(t);
          resolve(Number(m[1]));
        }
      };
      child.stdout!.on('data', onData);
      child.stderr!.on('data', onData);
      child.once('exit', (code) => reject(new Error(`kubectl port-forward exited ${code}: ${out}`)));
    });
    return { port: local, stop: () => child.kill() };
  }
}

export interface Pod {
  metadata: { name: string; uid: string; labels: Record<string, string>; deletionTimestamp?: string };
  spec: { nodeName?: string };
  status: { phase: string; podIP?: string; conditions?: { type: string; status: string }[]; containerStatuses?: { ready: boolean; restartCount: number }[] };
}

export const podReady = (p: Pod) => !p.metadata.deletionTimestamp && p.status.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') === true;

/** The `tern` CLI over a port-forward to the admin Service, with the operator token. */
export async function adminCli(kube: Kube): Promise<AdminTarget & { run: (...args: string[]) => Promise<string>; stop: () => void }> {
  const pf = await kube.portForward(`${kube.env.RELEASE}-admin`, 7000);
  const target: AdminTarget = { adminAddr: `127.0.0.1:${pf.port}`, adminToken: fs.readFileSync(kube.env.ADMIN_TOKEN_FILE, 'utf8').trim() };
  return {
    ...target,
    stop: pf.stop,
    run: async (...args: string[]) => {
      const r = await ternRaw(target, args);
      assert.equal(r.code, 0, `tern ${args.join(' ')} exited ${r.code}: ${r.stderr}${r.stdout}`);
      return r.stdout;
    },
  };
}

/** The text of a pod's /metrics (the host reaches pod addresses directly). */
export async function scrape(ip: string, port: number): Promise<string> {
  return (await fetch(`http://${ip}:${port}/metrics`, { signal: AbortSignal.timeout(5000) })).text();
}

// ---------------------------------------------------------------- SMTP load

/** What became of one message, as its client saw it. */
export interface Sent {
  messageId: string;
  rcpt: string;
  /** accepted: 250 with a queue id; refused: a 4xx/5xx reply; broken: no reply (connection lost or timed out). */
  outcome: 'accepted' | 'refused' | 'broken';
  queueId?: string;
  /** Every reply of a 4xx/5xx class, and every failure without a reply, with the command it answered. */
  trouble: string[];
}

export interface LoadReport {
  sent: Sent[];
  /** Replies by class over every command of every session ("2xx", "4xx", "5xx"). */
  classes: Record<string, number>;
  /** Failures without a reply: connect errors, connections closed or silent (no reply within the timeout). */
  noReply: string[];
  /** Replies of class 5: what must never be seen. */
  fiveXX: string[];
  /** Each distinct 4xx/5xx reply (command and first line), with how many times it was seen. */
  refusals: Record<string, number>;
  sessions: number;
}

export interface LoadOptions {
  host: string;
  port: number;
  /** Local address of the client (the host's bridge address: the release trusts it to relay). */
  localAddress: string;
  tag: string;
  sessions: number;
  messagesPerSession: number;
  /** Pause between messages within a session. */
  gapMs?: number;
  /** Keep opening new sessions until stop() (ignores `sessions` as a total; it is the concurrency). */
  continuous?: boolean;
  /** A refused or broken message is sent again in a later session, as an MTA would (until accepted or stop). */
  retry?: boolean;
  /** Recipient of message n (default `u<tag><n>@dest.test`). */
  recipient?: (n: number) => string;
  /** Reply timeout for one command: a silent server is a hang. */
  replyTimeoutMs?: number;
}

/**
 * An SMTP load: `sessions` concurrent clients, each sending
 * `messagesPerSession` messages per connection (MAIL, RCPT, DATA; RSET after a
 * refusal). Every reply is recorded; a message never accepted is counted as
 * refused or broken, never assumed delivered.
 */
export class SmtpLoad {
  readonly report: LoadReport = { sent: [], classes: { '2xx': 0, '3xx': 0, '4xx': 0, '5xx': 0 }, noReply: [], fiveXX: [], refusals: {}, sessions: 0 };
  private n = 0;
  private running = true;
  private readonly retryQueue: Sent[] = [];
  private loops: Promise<void>[] = [];

  constructor(private readonly o: LoadOptions) {}

  start(): this {
    for (let c = 0; c < this.o.sessions; c++) this.loops.push(this.client());
    return this;
  }

  /** Ends every client after its current message; resolves when all are done. */
  async stop(): Promise<LoadReport> {
    this.running = false;
    await Promise.all(this.loops);
    return this.report;
  }

  async done(): Promise<LoadReport> {
    await Promise.all(this.loops);
    return this.report;
  }

  get accepted(): Sent[] {
    return this.report.sent.filter((s) => s.outcome === 'accepted');
  }

  private next(): Sent | undefined {
    if (this.o.retry && this.retryQueue.length) return this.retryQueue.shift();
    if (!this.o.continuous && this.n >= this.o.sessions * this.o.messagesPerSession) return undefined;
    const n = ++this.n;
    const s: Sent = {
      messageId: `<k8s-${this.o.tag}-${n}@sender.test>`,
      rcpt: this.o.recipient?.(n) ?? `u${this.o.tag}${n}@dest.test`,
      outcome: 'broken',
      trouble: [],
    };
    this.report.sent.push(s);
    return s;
  }

  private note(r: SmtpReply, what: string, s?: Sent): void {
    const cls = `${Math.floor(r.code / 100)}xx`;
    this.report.classes[cls] = (this.report.classes[cls] ?? 0) + 1;
    if (r.code >= 400) {
      const key = `${what}: ${r.lines[0]?.replace(/queued as \S+/, 'queued as ...')}`;
      this.report.refusals[key] = (this.report.refusals[key] ?? 0) + 1;
      s?.trouble.push(`${what}: ${r.lines.join(' | ')}`);
      if (r.code >= 500) this.report.fiveXX.push(`${what} ${s?.rcpt ?? ''}: ${r.lines.join(' | ')}`);
    }
  }

  private async client(): Promise<void> {
    const timeout = this.o.replyTimeoutMs ?? 60_000;
    while (this.running) {
      let current = this.next();
      if (!current) return;
      let conn: RawSmtp | undefined;
      try {
        this.report.sessions++;
        const { client, greeting } = await RawSmtp.connect(this.o.host, this.o.port, this.o.localAddress);
        conn = client;
        this.note(greeting, 'greeting', current);
        if (greeting.code !== 220) throw new Refused();
        const ehlo = await conn.command('EHLO client.k8s.test', timeout);
        this.note(ehlo, 'EHLO', current);
        if (ehlo.code !== 250) throw new Refused();
        for (let i = 0; ; ) {
          await this.sendOne(conn, current, timeout);
          if (current.outcome !== 'accepted' && this.o.retry) this.retryQueue.push(current);
          current = undefined;
          if (++i >= this.o.messagesPerSession || !this.running) break;
          if (this.o.gapMs) await sleep(this.o.gapMs);
          current = this.next();
          if (!current) break;
        }
        this.note(await conn.command('QUIT', timeout), 'QUIT');
      } catch (err) {
        if (current) {
          if (err instanceof Refused) {
            current.outcome = 'refused';
          } else {
            const msg = `${current.rcpt}: ${(err as Error).message}`;
            this.report.noReply.push(msg);
            current.trouble.push(msg);
            current.outcome = 'broken';
          }
          if (this.o.retry) this.retryQueue.push(current);
        } else if (!(err instanceof Refused)) {
          this.report.noReply.push(`between messages: ${(err as Error).message}`);
        }
        await sleep(200);
      } finally {
        conn?.close();
      }
    }
  }

  /**
   * One transaction: `s.outcome` ends accepted, or refused when a reply was
   * 4xx/5xx (then RSET). A failure without a reply throws.
   */
  private async sendOne(conn: RawSmtp, s: Sent, timeout: number): Promise<void> {
    const step = async (line: string, what: string, want: number): Promise<boolean> => {
      const r = await conn.command(line, timeout);
      this.note(r, what, s);
      return r.code === want;
    };
    if (!(await step('MAIL FROM:<sender@sender.test>', 'MAIL', 250)) || !(await step(`RCPT TO:<${s.rcpt}>`, 'RCPT', 250)) || !(await step('DATA', 'DATA', 354))) {
      s.outcome = 'refused';
      await step('RSET', 'RSET', 250);
      return;
    }
    const body =
      `From: sender@sender.test\r\nTo: ${s.rcpt}\r\nSubject: cluster test ${this.o.tag}\r\nMessage-ID: ${s.messageId}\r\n` +
      `Date: ${new Date().toUTCString()}\r\n\r\n${'Tern on Kubernetes. '.repeat(20)}\r\n.`;
    const r = await conn.command(body, timeout);
    this.note(r, 'end of data', s);
    const m = /^250 2\.0\.0 Ok: queued as (\S+)/.exec(r.lines[0] ?? '');
    if (r.code === 250 && m) {
      s.outcome = 'accepted';
      s.queueId = m[1];
    } else {
      s.outcome = 'refused';
    }
  }
}

class Refused extends Error {}

/** Message-IDs the sink holds (messages, not reports), with how many copies. */
export function sinkCopies(sink: SmtpSink): Map<string, number> {
  const copies = new Map<string, number>();
  for (const m of sink.messages) {
    if (m.mailFrom === '') continue;
    const id = /^Message-ID: (<[^>]+>)/im.exec(m.raw.toString('latin1'))?.[1];
    if (id) copies.set(id, (copies.get(id) ?? 0) + 1);
  }
  return copies;
}

/** Waits until every accepted message is at the sink; returns the ones still missing when the time is up. */
export async function waitDelivered(sink: SmtpSink, accepted: Sent[], timeoutMs: number): Promise<{ missing: Sent[]; duplicates: number }> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const copies = sinkCopies(sink);
    const missing = accepted.filter((s) => !copies.has(s.messageId));
    const duplicates = accepted.reduce((n, s) => n + Math.max(0, (copies.get(s.messageId) ?? 0) - 1), 0);
    if (missing.length === 0 || Date.now() > deadline) return { missing, duplicates };
    await sleep(500);
  }
}

export function summarize(r: LoadReport): string {
  const by = (o: Sent['outcome']) => r.sent.filter((s) => s.outcome === o).length;
  const refusals = Object.entries(r.refusals)
    .sort((a, b) => b[1] - a[1])
    .map(([reply, n]) => `${n}x ${reply}`)
    .join('; ');
  return (
    `${r.sent.length} messages (${by('accepted')} accepted, ${by('refused')} refused, ${by('broken')} without a reply) over ${r.sessions} sessions; ` +
    `replies ${JSON.stringify(r.classes)}; ${r.noReply.length} failures without a reply${refusals ? `; refusals: ${refusals}` : ''}`
  );
}
