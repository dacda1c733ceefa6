// Connection reuse: a session that finished a transaction waits, idle, for
// the next job to the same host and port; its next transaction starts with
// RSET (pipelined with MAIL when the server offers PIPELINING: a session
// found stale there costs the job nothing, see StaleSessionError), and it
// is retired after a number of messages or when idle too long.
import { SmtpClient, type ConnectOptions } from './smtp-client';

export interface PoolOptions {
  maxMessagesPerConnection: number;
  idleMs: number;
}

interface Idle {
  client: SmtpClient;
  timer: NodeJS.Timeout;
}

export class ConnectionPool {
  private readonly idle = new Map<string, Idle[]>();
  opened = 0;
  reused = 0;

  constructor(private readonly opts: PoolOptions) {}

  /**
   * Sessions are shared only between jobs that would have opened the same
   * one: same source, peer, protocol and TLS requirements (a session set up
   * under "may" must never carry a job that needs "verify").
   */
  private key(o: ConnectOptions): string {
    const peer = o.socketPath ? `unix:${o.socketPath}` : `${o.address}:${o.port}`;
    return [o.localAddress ?? '', peer, o.lmtp ? 'lmtp' : 'smtp', o.tls, o.hostName, (o.tlsNames ?? []).join(','), o.heloName, o.auth?.user ?? '', o.dane ? `dane:${o.dane.map((t) => `${t.usage}${t.selector}${t.matchingType}${t.data.toString('hex')}`).join(',')}` : ''].join('|');
  }

  /** An idle session for these options (its RSET still to come), else a new one; `fresh` skips the idle ones. */
  async acquire(opts: ConnectOptions, fresh = false): Promise<SmtpClient> {
    const list = fresh ? undefined : this.idle.get(this.key(opts));
    while (list?.length) {
      const { client, timer } = list.pop()!;
      clearTimeout(timer);
      if (client.usable) {
        client.resetBeforeNext();
        this.reused++;
        return client;
      }
      client.destroy();
    }
    const client = await SmtpClient.connect(opts);
    this.opened++;
    return client;
  }

  /** Hands a session back after a transaction; `healthy` false closes it. */
  release(client: SmtpClient, opts: ConnectOptions, healthy: boolean): void {
    if (!healthy || !client.usable || client.messages >= this.opts.maxMessagesPerConnection) {
      void client.quit();
      return;
    }
    const key = this.key(opts);
    const list = this.idle.get(key) ?? [];
    const entry: Idle = {
      client,
      timer: setTimeout(() => {
        const i = list.indexOf(entry);
        if (i >= 0) list.splice(i, 1);
        void client.quit();
      }, this.opts.idleMs),
    };
    entry.timer.unref();
    list.push(entry);
    this.idle.set(key, list);
  }

  async close(): Promise<void> {
    const all = [...this.idle.values()].flat();
    this.idle.clear();
    await Promise.allSettled(
      all.map(({ client, timer }) => {
        clearTimeout(timer);
        return client.quit();
      }),
    );
  }
}
