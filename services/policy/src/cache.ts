// The in-memory copy of the policy data every decision reads. It is reloaded
// in full when Postgres NOTIFYs a change (a dedicated LISTEN connection, so a
// change made through any pod reaches every pod within moments), after the
// listener reconnects (a notification may have been missed), and on a timer
// as a safety net.
import { pg } from '@tern/db';
import type { Logger } from '@tern/telemetry';
import { NOTIFY_CHANNEL, type PolicyData, type PolicyStore } from './store';
import type { AliasRow, DomainRow, UserRow } from './validate';
import { errorMessage, repeatEvery, type Repeating } from '@tern/runtime';

export class Snapshot {
  readonly domains = new Map<string, DomainRow>();
  readonly mailboxes = new Map<string, boolean>();
  readonly aliases = new Map<string, AliasRow>();
  readonly users = new Map<string, UserRow>();

  constructor(
    data: PolicyData,
    readonly loadedAt = Date.now(),
  ) {
    for (const d of data.domains) this.domains.set(d.name, d);
    for (const m of data.mailboxes) this.mailboxes.set(m.address, m.enabled);
    for (const a of data.aliases) this.aliases.set(a.address, a);
    for (const u of data.users) this.users.set(u.username, u);
  }

  static empty(): Snapshot {
    return new Snapshot({ domains: [], mailboxes: [], aliases: [], users: [] }, 0);
  }
}

export interface CacheOptions {
  store: PolicyStore;
  databaseUrl: string;
  reloadMs: number;
  logger: Logger;
  onReload?: (snapshot: Snapshot, ms: number) => void;
}

export class PolicyCache {
  private current = Snapshot.empty();
  private loaded = false;
  private listener: pg.Client | undefined;
  private reloads: Repeating | undefined;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private inFlight: Promise<void> | undefined;
  private again = false;
  private stopped = false;
  private listening = false;

  constructor(private readonly opts: CacheOptions) {}

  get snapshot(): Snapshot {
    return this.current;
  }

  /** True once the data has been loaded at least once. */
  get ready(): boolean {
    return this.loaded;
  }

  get listenerConnected(): boolean {
    return this.listening;
  }

  async start(): Promise<void> {
    await this.listen();
    await this.reload();
    this.reloads = repeatEvery(this.opts.reloadMs, () => this.reload(), (err) =>
      this.opts.logger.warn({ err: errorMessage(err) }, 'periodic policy reload failed; keeping the previous data'),
    );
  }

  /**
   * Reloads everything. Calls during a reload coalesce into one more reload
   * after it, so the result always reflects every change committed before the call.
   */
  reload(): Promise<void> {
    if (this.inFlight) {
      this.again = true;
      return this.inFlight;
    }
    const run = async (): Promise<void> => {
      do {
        this.again = false;
        const t0 = performance.now();
        const data = await this.opts.store.loadAll();
        this.current = new Snapshot(data);
        this.loaded = true;
        this.opts.onReload?.(this.current, performance.now() - t0);
      } while (this.again && !this.stopped);
    };
    this.inFlight = run().finally(() => {
      this.inFlight = undefined;
    });
    return this.inFlight;
  }

  private async listen(): Promise<void> {
    if (this.stopped) return;
    const client = new pg.Client({ connectionString: this.opts.databaseUrl, application_name: 'tern-policy-listen' });
    const lost = (why: string) => {
      if (this.listener !== client) return;
      this.listener = undefined;
      this.listening = false;
      client.end().catch(() => undefined);
      if (this.stopped) return;
      this.opts.logger.warn({ why }, 'policy change listener lost; reconnecting');
      this.scheduleReconnect();
    };
    client.on('error', (err) => lost(err.message));
    client.on('end', () => lost('connection ended'));
    client.on('notification', () => {
      this.reload().catch((err: Error) => this.opts.logger.warn({ err: err.message }, 'policy reload after NOTIFY failed'));
    });
    this.listener = client;
    try {
      await client.connect();
      await client.query(`LISTEN ${NOTIFY_CHANNEL}`);
      this.listening = true;
    } catch (err) {
      lost(errorMessage(err));
      if (!this.loaded) throw err;
    }
  }

  private scheduleReconnect(delayMs = 1_000): void {
    if (this.reconnectTimer || this.stopped) return;
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined;
      this.listen()
        .then(() => {
          // Changes made while we were not listening are picked up now.
          if (this.listening) return this.reload();
          return undefined;
        })
        .catch((err: Error) => {
          this.opts.logger.warn({ err: err.message }, 'policy change listener reconnect failed');
          this.scheduleReconnect(Math.min(delayMs * 2, 15_000));
        });
    }, delayMs);
    this.reconnectTimer.unref();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.reloads?.stop();
    clearTimeout(this.reconnectTimer);
    const client = this.listener;
    this.listener = undefined;
    this.listening = false;
    await client?.end().catch(() => undefined);
    await this.inFlight?.catch(() => undefined);
  }
}
