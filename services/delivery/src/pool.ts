// Connection reuse: a session that finished a transaction waits, idle, for
// the next job to the same host and port; its next transaction starts with
// RSET (pipelined with MAIL when the server offers PIPELINING: a session
// found stale there costs the job nothing, see StaleSessionError), and it
// is retired after a number of messages or when idle too long.
//
// Sessions per peer (source address and remote address:port, or socket) are
// capped, idle ones included: receivers limit connections per client IP
// (Postfix's smtpd_client_connection_count_limit, 50 by default), and the
// queue's per-destination slots count jobs in the hand-off, not sessions. A
// job that finds the peer at the cap waits for a session to come back (it
// takes that one) or to close (it opens its own); an idle session to that
// peer under other options is closed to make room.
import { SmtpClient, type ConnectOptions } from './smtp-client';

export interface PoolOptions {
  maxMessagesPerConnection: number;
  idleMs: number;
  /** Sessions open at once to one peer, idle ones included. */
  maxSessionsPerPeer: number;
}

interface Idle {
  client: SmtpClient;
  timer: NodeJS.Timeout;
}

/** Thrown to jobs waiting for a session when the pool closes (the job goes back to the stream). */
export class PoolClosedError extends Error {
  constructor() {
    super('delivery is shutting down: no new SMTP sessions');
  }
}

export class ConnectionPool {
  private readonly idle = new Map<string, Idle[]>();
  /** Open sessions per peer, in use or idle (a connect in progress counts). */
  private readonly open = new Map<string, number>();
  private readonly waiting = new Map<string, (() => void)[]>();
  private closed = false;
  opened = 0;
  reused = 0;
  /** Times a job waited for a session because its peer was at the cap. */
  waited = 0;

  constructor(private readonly opts: PoolOptions) {}

  /**
   * Sessions are shared only between jobs that would have opened the same
   * one: same source, peer, protocol and TLS requirements (a session set up
   * under "may" must never carry a job that needs "verify").
   */
  private key(o: ConnectOptions): string {
    return [this.peer(o), o.lmtp ? 'lmtp' : 'smtp', o.tls, o.hostName, (o.tlsNames ?? []).join(','), o.heloName, o.auth?.user ?? '', o.dane ? `dane:${o.dane.map((t) => `${t.usage}${t.selector}${t.matchingType}${t.data.toString('hex')}`).join(',')}` : ''].join('|');
  }

  /** What a receiver counts connections by: our source address and its address and port. */
  private peer(o: ConnectOptions): string {
    return o.socketPath ? `unix:${o.socketPath}` : `${o.localAddress ?? ''}>${o.address}:${o.port}`;
  }

  /** Sessions open to the peer of `opts` (in use or idle). */
  sessionsTo(opts: ConnectOptions): number {
    return this.open.get(this.peer(opts)) ?? 0;
  }

  /** An idle session for these options (its RSET still to come), else a new one; `fresh` skips the idle ones. */
  async acquire(opts: ConnectOptions, fresh = false): Promise<SmtpClient> {
    const key = this.key(opts);
    const peer = this.peer(opts);
    let woken = false;
    for (;;) {
      if (this.closed) throw new PoolClosedError();
      const list = fresh ? undefined : this.idle.get(key);
      while (list?.length) {
        const { client, timer } = list.pop()!;
        clearTimeout(timer);
        if (client.usable) {
          client.resetBeforeNext();
          this.reused++;
          return client;
        }
        this.gone(peer, client);
      }
      if (this.sessionsTo(opts) < this.opts.maxSessionsPerPeer) break;
      // At the cap: an idle session to the peer under other options makes room once it has quit.
      if (await this.closeIdleTo(peer)) continue;
      // A job woken before that lost the session to a newcomer keeps its place at the front.
      if (!woken) this.waited++;
      await new Promise<void>((resolve) => {
        const q = this.waiting.get(peer) ?? [];
        if (woken) q.unshift(resolve);
        else q.push(resolve);
        this.waiting.set(peer, q);
      });
      woken = true;
    }
    this.open.set(peer, this.sessionsTo(opts) + 1);
    try {
      const client = await SmtpClient.connect(opts);
      this.opened++;
      return client;
    } catch (err) {
      this.gone(peer);
      throw err;
    }
  }

  /** Hands a session back after a transaction; `healthy` false closes it (QUIT first when it can). */
  release(client: SmtpClient, opts: ConnectOptions, healthy: boolean): void {
    const peer = this.peer(opts);
    if (this.closed || !healthy || !client.usable || client.messages >= this.opts.maxMessagesPerConnection) {
      this.quit(peer, client);
      return;
    }
    const key = this.key(opts);
    const list = this.idle.get(key) ?? [];
    const entry: Idle = {
      client,
      timer: setTimeout(() => {
        const i = list.indexOf(entry);
        if (i >= 0) list.splice(i, 1);
        this.quit(peer, client);
      }, this.opts.idleMs),
    };
    entry.timer.unref();
    list.push(entry);
    this.idle.set(key, list);
    this.wake(peer);
  }

  /** Drops a session that broke mid-transaction (no QUIT: the peer may be inside DATA). */
  discard(client: SmtpClient, opts: ConnectOptions): void {
    this.gone(this.peer(opts), client);
  }

  /** One session to `peer` fewer (closed now, or never opened); `client` is destroyed. */
  private gone(peer: string, client?: SmtpClient): void {
    client?.destroy();
    const n = (this.open.get(peer) ?? 0) - 1;
    if (n > 0) this.open.set(peer, n);
    else this.open.delete(peer);
    this.wake(peer);
  }

  /** Lets one job waiting for `peer` look again. */
  private wake(peer: string): void {
    const q = this.waiting.get(peer);
    const next = q?.shift();
    if (q && !q.length) this.waiting.delete(peer);
    next?.();
  }

  /** QUIT, then one session to `peer` fewer: the receiver counts the connection until it closes. */
  private quit(peer: string, client: SmtpClient): Promise<void> {
    return client
      .quit()
      .catch(() => undefined)
      .finally(() => this.gone(peer));
  }

  /** Closes one idle session to `peer` (opened under other options than a waiting job needs); false when there is none. */
  private async closeIdleTo(peer: string): Promise<boolean> {
    for (const [key, list] of this.idle) {
      if (!key.startsWith(`${peer}|`)) continue;
      const entry = list.shift();
      if (!list.length) this.idle.delete(key);
      if (!entry) continue;
      clearTimeout(entry.timer);
      await this.quit(peer, entry.client);
      return true;
    }
    return false;
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const q of this.waiting.values()) for (const w of q.splice(0)) w();
    this.waiting.clear();
    const all = [...this.idle.values()].flat();
    this.idle.clear();
    this.open.clear();
    await Promise.allSettled(
      all.map(({ client, timer }) => {
        clearTimeout(timer);
        return client.quit();
      }),
    );
  }
}
