// JetStream access for the services: connect, create the topology
// idempotently, publish with Nats-Msg-Id and W3C trace context, and consume
// with bounded concurrency, surviving NATS restarts.
import { connect } from '@nats-io/transport-node';
import { errorMessage, Part, part } from '@tern/runtime';
import { headers as natsHeaders, nanos, type NatsConnection, type MsgHdrs } from '@nats-io/nats-core';
import {
  jetstream,
  jetstreamManager,
  AckPolicy,
  DeliverPolicy,
  RetentionPolicy,
  StorageType,
  DiscardPolicy,
  type JetStreamClient,
  type JetStreamManager,
  type JsMsg,
  type PubAck,
} from '@nats-io/jetstream';
import { context, propagation, type Context } from '@opentelemetry/api';
import type { Logger } from '@tern/telemetry';
import { JetStreamPublisher } from './publisher';
import { CONSUMERS, STREAMS, type ConsumerName, type ConsumerSpec, type StreamSpec } from './topology';

export * from './topology';
export { encodeLifecycleEvents, EVENT_FORMATS, type EventFormat } from './events';
export { JetStreamPublisher } from './publisher';

/** How long a publish waits for its PubAck. */
const PUBLISH_TIMEOUT_MS = 10_000;

export interface StreamBacklog {
  stream: string;
  messages: number;
  bytes: number;
}

export interface ConsumerBacklog {
  stream: string;
  consumer: string;
  /** Messages not yet delivered to the consumer. */
  pending: number;
  /** Delivered and not yet acknowledged. */
  ackPending: number;
  /** Delivered more than once and not yet acknowledged. */
  redelivered: number;
}

export interface BusOptions {
  url: string;
  /** Connection name shown by `nats server report connections`. */
  name: string;
  logger: Logger;
}

export interface PublishOptions {
  /** Deduplication id: a republish with the same id inside the window is dropped. */
  msgId: string;
  /** Trace context to carry; defaults to the active one. */
  ctx?: Context;
}

export interface BusMessage {
  data: Uint8Array;
  subject: string;
  /** Trace context from the message headers. */
  ctx: Context;
  /** How many times JetStream has delivered this message (1 = first). */
  deliveryCount: number;
  msgId: string | undefined;
  ack(): void;
  /** Redeliver after `delayMs`. */
  nak(delayMs?: number): void;
  /** Drop for good (poison message); the caller logs the reason. */
  term(reason: string): void;
  /** Reset the ack timer (long work in progress). */
  working(): void;
}

export interface ConsumeOptions {
  /** Messages processed at once by this process. */
  concurrency: number;
  /** On handler error: redeliver after this delay. */
  retryDelayMs?: number;
}

export interface Consumption {
  /** Stop taking new messages and wait for in-flight handlers. */
  stop(): Promise<void>;
}

/** Every stream's max_bytes together: what JetStream must be able to reserve. */
export const STREAMS_MAX_BYTES = (Object.values(STREAMS) as StreamSpec[]).reduce((sum, spec) => sum + spec.maxBytes, 0);

const gib = (bytes: number) => `${(bytes / 1024 ** 3).toFixed(bytes % 1024 ** 3 ? 1 : 0)} GiB`;

/**
 * JetStream reserves a stream's max_bytes from its file store when the
 * stream is made; a server with less says only "insufficient storage
 * resources". The operator needs the figure and the setting.
 */
function storageError(spec: StreamSpec, err: unknown): unknown {
  if (!/insufficient (storage )?resources/i.test(errorMessage(err))) return err;
  return new Error(
    `NATS JetStream cannot reserve ${gib(spec.maxBytes)} for stream ${spec.name}: ${errorMessage(err)}. ` +
      `Tern's streams reserve ${gib(STREAMS_MAX_BYTES)} of file storage together: raise the server's jetstream max_file_store ` +
      '(and its volume) to at least that, or free what other streams reserve, then restart this service',
    { cause: err },
  );
}

/**
 * The servers of a TERN_NATS_URL (one URL or a comma-separated list) and the
 * credentials written in it: nats.js takes user and password (or a token,
 * `nats://TOKEN@host`) only as options, not from a server URL, so
 * `nats://tern:PASSWORD@nats:4222` would otherwise connect without them.
 */
export function natsServers(url: string): { servers: string[]; user?: string; pass?: string; token?: string } {
  const servers: string[] = [];
  let user: string | undefined;
  let pass: string | undefined;
  for (const raw of url.split(',').map((s) => s.trim()).filter(Boolean)) {
    let u: URL;
    try {
      u = new URL(raw.includes('://') ? raw : `nats://${raw}`);
    } catch {
      servers.push(raw);
      continue;
    }
    if (u.username && user === undefined) {
      user = decodeURIComponent(u.username);
      pass = u.password ? decodeURIComponent(u.password) : undefined;
    }
    servers.push(`${u.protocol}//${u.host}`);
  }
  if (user !== undefined && pass === undefined) return { servers, token: user };
  return { servers, ...(user !== undefined ? { user, pass } : {}) };
}

export class Bus {
  private constructor(
    readonly nc: NatsConnection,
    readonly js: JetStreamClient,
    readonly jsm: JetStreamManager,
    private readonly logger: Logger,
    private readonly publisher: JetStreamPublisher,
  ) {}

  static async connect(opts: BusOptions): Promise<Bus> {
    const nc = await connect({
      ...natsServers(opts.url),
      name: opts.name,
      maxReconnectAttempts: -1,
      reconnectTimeWait: 500,
      waitOnFirstConnect: true,
      // Otherwise every request (each JetStream publish and ack) builds an
      // Error up front to capture the caller's stack, a few percent of a
      // busy service's CPU; errors still say what failed.
      noAsyncTraces: true,
    });
    const jsm = await jetstreamManager(nc, { timeout: 10_000 });
    const js = jetstream(nc, { timeout: 10_000 });
    const bus = new Bus(nc, js, jsm, opts.logger, new JetStreamPublisher(nc, PUBLISH_TIMEOUT_MS));
    void bus.watchStatus();
    return bus;
  }

  private async watchStatus(): Promise<void> {
    for await (const s of this.nc.status()) {
      if (s.type === 'disconnect' || s.type === 'reconnect') this.logger.warn({ nats: s.type }, `NATS ${s.type}`);
    }
  }

  /**
   * What each stream holds and each durable consumer has yet to take or to
   * acknowledge, from the JetStream API (for metrics). A stream or consumer
   * that does not exist yet is left out.
   */
  async backlog(): Promise<{ streams: StreamBacklog[]; consumers: ConsumerBacklog[] }> {
    const streams: StreamBacklog[] = [];
    const consumers: ConsumerBacklog[] = [];
    for (const spec of Object.values(STREAMS) as StreamSpec[]) {
      try {
        const info = await this.jsm.streams.info(spec.name);
        streams.push({ stream: spec.name, messages: info.state.messages, bytes: info.state.bytes });
      } catch {
        // not created yet
      }
    }
    for (const spec of Object.values(CONSUMERS) as ConsumerSpec[]) {
      try {
        const info = await this.jsm.consumers.info(spec.stream, spec.durable);
        consumers.push({ stream: spec.stream, consumer: spec.durable, pending: info.num_pending, ackPending: info.num_ack_pending, redelivered: info.num_redelivered });
      } catch {
        // not created yet
      }
    }
    return { streams, consumers };
  }

  /** Creates or updates every stream and the named consumers. Safe to run from every pod. */
  async ensureTopology(consumers: ConsumerName[] = []): Promise<void> {
    for (const spec of Object.values(STREAMS) as StreamSpec[]) {
      const config = {
        name: spec.name,
        subjects: spec.subjects,
        retention: spec.log ? RetentionPolicy.Limits : RetentionPolicy.Workqueue,
        storage: StorageType.File,
        // A full work queue refuses the publish (the outbox row stays, the
        // result's job is retried) instead of dropping its oldest message:
        // with Old a backlog past the bound silently lost results and
        // report requests (I2). A log (events) drops its oldest instead, so
        // mail never waits for its readers.
        discard: spec.log ? DiscardPolicy.Old : DiscardPolicy.New,
        ...(spec.log ? { max_age: nanos(spec.log.maxAgeMs) } : {}),
        duplicate_window: nanos(spec.duplicateWindowMs),
        max_msgs: spec.maxMessages,
        max_bytes: spec.maxBytes,
        num_replicas: 1,
      };
      try {
        await this.jsm.streams.info(spec.name);
        const { name: _n, retention: _r, storage: _s, ...mutable } = config;
        await this.jsm.streams.update(spec.name, mutable);
      } catch (err) {
        if (!isNotFound(err)) throw storageError(spec, err);
        try {
          await this.jsm.streams.add(config);
        } catch (addErr) {
          // Another pod created it in the meantime.
          if (!/already in use|exists/i.test(errorMessage(addErr))) throw storageError(spec, addErr);
        }
      }
    }
    for (const name of consumers) {
      const spec = CONSUMERS[name];
      const config = {
        durable_name: spec.durable,
        ack_policy: AckPolicy.Explicit,
        deliver_policy: DeliverPolicy.All,
        ack_wait: nanos(spec.ackWaitMs),
        max_ack_pending: spec.maxAckPending,
        max_deliver: -1,
      };
      try {
        await this.jsm.consumers.info(spec.stream, spec.durable);
        await this.jsm.consumers.update(spec.stream, spec.durable, {
          ack_wait: config.ack_wait,
          max_ack_pending: config.max_ack_pending,
          max_deliver: config.max_deliver,
        });
      } catch (err) {
        if (!isNotFound(err)) throw err;
        await this.jsm.consumers.add(spec.stream, config);
      }
    }
  }

  /** Publishes to the stream that takes `subject`; resolves once it is stored (PubAck). */
  publish(subject: string, data: Uint8Array, opts: PublishOptions): Promise<PubAck> {
    const hdrs = natsHeaders();
    hdrs.set('Nats-Msg-Id', opts.msgId);
    propagation.inject(opts.ctx ?? context.active(), hdrs, { set: (h, k, v) => h.set(k, v) });
    return this.publisher.publish(subject, data, hdrs);
  }

  /**
   * Runs `handler` for every message of the durable consumer, at most
   * `concurrency` at a time. A handler that throws gets its message
   * redelivered after `retryDelayMs`. Re-subscribes after NATS restarts.
   * `stop()` lets running handlers finish and hands back (nak) messages that
   * were fetched but not started.
   */
  consume(name: ConsumerName, handler: (msg: BusMessage) => Promise<void>, opts: ConsumeOptions): Consumption {
    const spec = CONSUMERS[name];
    let stopping = false;
    let current: { stop(): void } | undefined;
    const inflight = new Set<Promise<void>>();
    const retryDelayMs = opts.retryDelayMs ?? 5_000;

    const run = async (m: JsMsg) => {
      const msg = toBusMessage(m);
      try {
        await handler(msg);
      } catch (err) {
        this.logger.error({ err: errorMessage(err), consumer: spec.durable, subject: m.subject }, 'message handler failed; redelivering later');
        m.nak(retryDelayMs);
      }
    };

    const loop = async () => {
      while (!stopping) {
        try {
          const consumer = await this.js.consumers.get(spec.stream, spec.durable);
          const messages = await consumer.consume({ max_messages: Math.max(opts.concurrency * 2, 16), idle_heartbeat: 5_000 });
          current = messages;
          // Fetched but not started when we stop: handed back (nak) once the
          // pull has ended, so another pod takes them at once instead of after
          // the ack wait. Not before: a nak while our pull is still open could
          // bring the message straight back here.
          const handBack: JsMsg[] = [];
          for await (const m of messages) {
            if (stopping) {
              handBack.push(m);
              continue;
            }
            const p = run(m).finally(() => inflight.delete(p));
            inflight.add(p);
            if (inflight.size >= opts.concurrency) await Promise.race(inflight);
          }
          for (const m of handBack) m.nak();
        } catch (err) {
          if (stopping) break;
          this.logger.warn({ err: errorMessage(err), consumer: spec.durable }, 'consumer interrupted; resubscribing');
        }
        if (!stopping) await sleep(1_000);
      }
    };
    const done = loop();

    return {
      async stop() {
        stopping = true;
        current?.stop();
        await Promise.allSettled([...inflight]);
        await Promise.race([done, sleep(2_000)]);
      },
    };
  }

  /** Flushes what was published, then closes. */
  async close(): Promise<void> {
    if (this.nc.isClosed()) return;
    // Publishes under way get their acks first (drain would end the ack subscription).
    await this.publisher.settled(2_000);
    this.publisher.close();
    await this.nc.drain().catch(() => undefined);
    await this.nc.closed();
  }
}

/**
 * The headers (trace context, Nats-Msg-Id) and the delivery count are read
 * when first asked for: parsing the header block and the reply subject for
 * every message cost a consumer that uses neither (the queue's results)
 * CPU for nothing (docs/performance.md).
 */
function toBusMessage(m: JsMsg): BusMessage {
  const active = context.active();
  let ctx: Context | undefined;
  return {
    data: m.data,
    subject: m.subject,
    get ctx(): Context {
      const hdrs: MsgHdrs | undefined = m.headers;
      ctx ??= hdrs
        ? propagation.extract(active, hdrs, {
            get: (h, k) => h.get(k) || undefined,
            keys: (h) => [...h.keys()],
          })
        : active;
      return ctx;
    },
    get deliveryCount(): number {
      return m.info.deliveryCount;
    },
    get msgId(): string | undefined {
      return m.headers?.get('Nats-Msg-Id') || undefined;
    },
    ack: () => m.ack(),
    nak: (delayMs) => m.nak(delayMs),
    // nats-server before 2.10.4 ignores a TERM that carries a reason and
    // redelivers; log the reason instead and send a plain TERM.
    term: () => m.term(),
    working: () => m.working(),
  };
}

function isNotFound(err: unknown): boolean {
  return /not found/i.test(errorMessage(err));
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/**
 * The NATS connection as a part of its service (libs/runtime Components):
 * start connects and ensures the topology with the service's consumers,
 * drain flushes what was published and closes. `bus` is the connection
 * once started (before: an error saying so, never a half-made Bus).
 */
export class BusPart extends Part {
  private connected: Bus | undefined;

  constructor(opts: BusOptions, consumers: ConsumerName[]) {
    super('NATS', {
      start: async () => {
        this.connected = await Bus.connect(opts);
        await this.connected.ensureTopology(consumers);
      },
      drain: () => this.connected?.close(),
    });
  }

  get bus(): Bus {
    if (!this.connected) throw new Error('NATS is not connected yet (the service has not started)');
    return this.connected;
  }

  /** Connected and not closed (it stays open while it reconnects): what delivery and bounce call ready. */
  get open(): boolean {
    return this.connected !== undefined && !this.connected.nc.isClosed();
  }

  /** A durable consumer as a part: start consumes, drain lets running handlers finish (Consumption.stop). */
  consumer(name: ConsumerName, handler: (msg: BusMessage) => Promise<void>, opts: ConsumeOptions): Part {
    let consumption: Consumption | undefined;
    return part(`consumer ${name}`, {
      start: () => {
        consumption = this.bus.consume(name, handler, opts);
      },
      drain: () => consumption?.stop(),
    });
  }
}
