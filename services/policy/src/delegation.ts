// The Postfix policy delegation protocol (SMTPD_POLICY_README) as a client,
// so existing policy servers (postgrey, policyd-spf, ...) can be chained in:
// name=value lines and an empty line out, `action=...` and an empty line back,
// over a kept-alive TCP connection. Servers are asked in order; DUNNO goes on
// to the next, anything else decides.
import net from 'node:net';
import { CheckStage, PolicyAction, type CheckRequest } from '@tern/proto';
import type { Logger } from '@tern/telemetry';
import { stageName, type Client } from './engine';
import { accept, refuse, type Decision } from './replies';
import { errorMessage } from '@tern/runtime';

export interface DelegationOptions {
  servers: Array<{ host: string; port: number }>;
  timeoutMs: number;
  /** Stages at which the servers are asked (default rcpt). */
  stages: CheckStage[];
  /** What a server that cannot be reached or gives nonsense amounts to (Postfix default_action). */
  defaultAction: string;
  logger: Logger;
}

const STATE: Record<number, string> = {
  [CheckStage.CHECK_STAGE_CONNECT]: 'CONNECT',
  [CheckStage.CHECK_STAGE_HELO]: 'EHLO',
  [CheckStage.CHECK_STAGE_MAIL]: 'MAIL',
  [CheckStage.CHECK_STAGE_RCPT]: 'RCPT',
  [CheckStage.CHECK_STAGE_DATA]: 'DATA',
};

/** Maps an `action=` value to a decision; undefined for DUNNO (and the no-op actions). */
export function mapAction(action: string, req: CheckRequest): Decision | undefined | 'invalid' {
  const m = /^(\S+)\s*(.*)$/s.exec(action.trim());
  if (!m) return 'invalid';
  const verb = (m[1] as string).toUpperCase();
  const text = (m[2] as string).trim();
  const rcpt = req.recipient.trim();
  // Postfix prefixes the text with what was rejected: "<addr>: Recipient address rejected: text".
  const what =
    req.stage === CheckStage.CHECK_STAGE_RCPT
      ? `<${rcpt}>: Recipient address rejected: `
      : req.stage === CheckStage.CHECK_STAGE_MAIL
        ? `<${req.sender}>: Sender address rejected: `
        : '';
  const reason = 'policy_server';
  if (/^[45]\d\d$/.test(verb)) {
    const code = Number(verb);
    const em = /^([45]\.\d{1,3}\.\d{1,3})\s*(.*)$/s.exec(text);
    const enhanced = em ? (em[1] as string) : code >= 500 ? '5.7.1' : '4.7.1';
    if (enhanced[0] !== verb[0]) return 'invalid';
    return refuse(reason, code, enhanced, `${what}${(em ? (em[2] as string) : text) || 'Access denied'}`);
  }
  switch (verb) {
    case 'OK':
      return accept(reason);
    case 'DUNNO':
    case 'PREPEND':
    case 'WARN':
    case 'FILTER':
    case 'REDIRECT':
    case 'BCC':
    case 'DEFER_IF_REJECT':
      return undefined;
    case 'REJECT':
      return refuse(reason, 554, '5.7.1', `${what}${text || 'Access denied'}`);
    case 'DEFER':
    case 'DEFER_IF_PERMIT':
      return refuse(reason, 450, '4.7.1', `${what}${text || 'Service unavailable'}`);
    case 'HOLD':
    case 'DISCARD':
      return { action: PolicyAction.POLICY_ACTION_HOLD, reason, reply: undefined };
    default:
      return 'invalid';
  }
}

function clean(v: string | number | undefined): string {
  return String(v ?? '').replace(/[\r\n\0]/g, ' ');
}

export function requestAttributes(req: CheckRequest, client: Client): Record<string, string> {
  const s = req.session;
  return {
    request: 'smtpd_access_policy',
    protocol_state: STATE[req.stage] ?? 'RCPT',
    protocol_name: 'ESMTP',
    helo_name: clean(s?.heloName),
    queue_id: '',
    sender: clean(req.sender),
    recipient: clean(req.recipient),
    recipient_count: String(req.recipients.length),
    client_address: clean(s?.clientAddress),
    client_name: clean(s?.clientName || 'unknown'),
    reverse_client_name: clean(s?.clientName || 'unknown'),
    instance: clean(s?.sessionId),
    sasl_method: client.user ? 'PLAIN' : '',
    sasl_username: clean(client.user?.username),
    sasl_sender: '',
    size: String(req.declaredSize || 0),
    ccert_subject: '',
    ccert_issuer: '',
    ccert_fingerprint: '',
    encryption_protocol: clean(s?.tls?.used ? s.tls.version : ''),
    encryption_cipher: clean(s?.tls?.used ? s.tls.cipher : ''),
    encryption_keysize: '',
    etrn_domain: '',
    stress: '',
    server_address: '',
    server_port: '',
    policy_context: '',
  };
}

/** One kept-alive connection per server; requests on it are serialised. */
class Connection {
  private socket: net.Socket | undefined;
  private buffer = '';
  private waiter: { resolve: (v: string) => void; reject: (e: Error) => void } | undefined;
  private chain: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly host: string,
    private readonly port: number,
    private readonly timeoutMs: number,
  ) {}

  ask(attrs: Record<string, string>): Promise<Record<string, string>> {
    // A kept-alive connection the server has meanwhile closed fails at once;
    // like Postfix, try once more on a fresh connection.
    const run = async () => {
      const reused = this.socket !== undefined && !this.socket.destroyed;
      try {
        return await this.exchange(attrs);
      } catch (err) {
        if (!reused || /no answer within/.test(errorMessage(err))) throw err;
        this.socket?.destroy();
        this.socket = undefined;
        return this.exchange(attrs);
      }
    };
    const p = this.chain.then(run, run);
    this.chain = p.catch(() => undefined);
    return p;
  }

  private connect(): Promise<net.Socket> {
    if (this.socket && !this.socket.destroyed) return Promise.resolve(this.socket);
    return new Promise((resolve, reject) => {
      const socket = net.connect({ host: this.host, port: this.port });
      socket.setEncoding('utf8');
      const timer = setTimeout(() => socket.destroy(new Error('connect timeout')), this.timeoutMs);
      socket.once('connect', () => {
        clearTimeout(timer);
        this.socket = socket;
        this.buffer = '';
        resolve(socket);
      });
      socket.on('data', (chunk: string) => this.onData(chunk));
      socket.on('error', (err) => {
        clearTimeout(timer);
        this.fail(err);
        reject(err);
      });
      socket.on('close', () => {
        if (this.socket === socket) this.socket = undefined;
        this.fail(new Error('policy server closed the connection'));
      });
    });
  }

  private onData(chunk: string): void {
    this.buffer += chunk;
    if (this.buffer.length > 64 * 1024) {
      this.socket?.destroy(new Error('policy server response too long'));
      return;
    }
    const end = this.buffer.indexOf('\n\n');
    if (end < 0 || !this.waiter) return;
    const block = this.buffer.slice(0, end);
    this.buffer = this.buffer.slice(end + 2);
    const w = this.waiter;
    this.waiter = undefined;
    w.resolve(block);
  }

  private fail(err: Error): void {
    const w = this.waiter;
    this.waiter = undefined;
    w?.reject(err);
  }

  private async exchange(attrs: Record<string, string>): Promise<Record<string, string>> {
    const socket = await this.connect();
    const payload = Object.entries(attrs).map(([k, v]) => `${k}=${v}\n`).join('') + '\n';
    const block = await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = undefined;
        socket.destroy();
        reject(new Error(`no answer within ${this.timeoutMs} ms`));
      }, this.timeoutMs);
      this.waiter = {
        resolve: (v) => {
          clearTimeout(timer);
          resolve(v);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      };
      socket.write(payload);
    });
    const out: Record<string, string> = {};
    for (const line of block.split('\n')) {
      const eq = line.indexOf('=');
      if (eq > 0) out[line.slice(0, eq).trim().toLowerCase()] = line.slice(eq + 1).replace(/\r$/, '');
    }
    return out;
  }

  close(): void {
    this.socket?.destroy();
  }
}

export class Delegation {
  private readonly connections: Connection[];

  constructor(private readonly opts: DelegationOptions) {
    this.connections = opts.servers.map((s) => new Connection(s.host, s.port, opts.timeoutMs));
  }

  private defaultDecision(req: CheckRequest, server: string, why: string): Decision {
    this.opts.logger.warn({ server, why }, 'policy server failed; using the default action');
    const mapped = mapAction(this.opts.defaultAction, req);
    if (mapped === 'invalid' || mapped === undefined) {
      return mapped === undefined ? accept('ok') : refuse('delegation_error', 451, '4.3.5', 'Server configuration problem');
    }
    return { ...mapped, reason: 'delegation_error' };
  }

  hook = async (req: CheckRequest, client: Client, decision: Decision): Promise<Decision | undefined> => {
    if (!this.opts.stages.includes(req.stage) || decision.action !== PolicyAction.POLICY_ACTION_ACCEPT) return undefined;
    // As in the usual Postfix order: permit_mynetworks, permit_sasl_authenticated come first.
    if (client.trusted || client.user) return undefined;
    const attrs = requestAttributes(req, client);
    for (const [i, conn] of this.connections.entries()) {
      const server = `${this.opts.servers[i]?.host}:${this.opts.servers[i]?.port}`;
      let answer: Record<string, string>;
      try {
        answer = await conn.ask(attrs);
      } catch (err) {
        const d = this.defaultDecision(req, server, errorMessage(err));
        if (d.action === PolicyAction.POLICY_ACTION_ACCEPT) continue;
        return d;
      }
      const action = answer.action;
      const mapped = action === undefined ? 'invalid' : mapAction(action, req);
      this.opts.logger.debug({ server, stage: stageName(req.stage), action }, 'policy server answered');
      if (mapped === 'invalid') {
        const d = this.defaultDecision(req, server, `unusable answer ${JSON.stringify(action ?? '')}`);
        if (d.action === PolicyAction.POLICY_ACTION_ACCEPT) continue;
        return d;
      }
      if (mapped) return mapped.action === PolicyAction.POLICY_ACTION_ACCEPT ? { ...mapped, localRecipient: decision.localRecipient, reason: decision.reason } : mapped;
    }
    return undefined;
  };

  close(): void {
    for (const c of this.connections) c.close();
  }
}

