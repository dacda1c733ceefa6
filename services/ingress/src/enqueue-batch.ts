// Whole small messages go to the queue in batches: while fewer than
// `maxCalls` batches are in flight a message leaves at once (a batch of one:
// no added latency when the load is light); otherwise it waits for the next
// batch, with every message whose end of data came in meanwhile. Under load,
// one batch then carries many messages instead of one client stream (HTTP/2
// stream, metadata, three requests) each.
//
// The batches travel on one long-lived EnqueueStream (EnqueueStreamClient):
// a request per batch, answered by its seq. A unary call costs grpc-js
// more CPU than a message on an open stream (client and server together;
// docs/performance.md), and the call is on every message's path to its 250.
import { grpc, grpcError } from '@tern/grpc';
import type { EnqueueMessage, EnqueueOutcome, EnqueueStreamRequest, EnqueueStreamResponse } from '@tern/proto';
import { untraced } from '@tern/telemetry';
import { call, type QueueClient } from './clients';

export interface EnqueueBatcherOptions {
  /** Batches in flight at most. */
  maxCalls: number;
  /** Messages per batch at most. */
  maxMessages: number;
  /** Deadline of one batch (the commit timeout). */
  deadlineMs: number;
  /** A stream takes this many batches, or lives this long, before the next batch opens a new one (see EnqueueStreamClient). */
  streamBatches?: number;
  streamMaxAgeMs?: number;
}

interface Waiting {
  message: EnqueueMessage;
  resolve(o: EnqueueOutcome): void;
  reject(err: Error): void;
}

export class EnqueueBatcher {
  private waiting: Waiting[] = [];
  private inFlight = 0;
  readonly stream: EnqueueStreamClient;

  constructor(queue: QueueClient, private readonly o: EnqueueBatcherOptions) {
    this.stream = new EnqueueStreamClient(queue, { deadlineMs: o.deadlineMs, batchesPerStream: o.streamBatches ?? 1000, maxAgeMs: o.streamMaxAgeMs ?? 60_000 });
  }

  /** The message's outcome (stored: queue id; refused: error code and text); rejects when its batch fails. */
  add(message: EnqueueMessage): Promise<EnqueueOutcome> {
    return new Promise((resolve, reject) => {
      this.waiting.push({ message, resolve, reject });
      this.pump();
    });
  }

  /** Several messages that go in one batch (the parts of one split message), each with its own outcome. */
  addAll(messages: EnqueueMessage[]): Promise<EnqueueOutcome>[] {
    if (messages.length > this.o.maxMessages) return messages.map((m) => this.add(m));
    const out = messages.map((message) => new Promise<EnqueueOutcome>((resolve, reject) => this.waiting.push({ message, resolve, reject })));
    this.pump();
    return out;
  }

  /** Half-closes the stream (after the SMTP listeners closed: nothing is waiting any more). */
  close(): void {
    this.stream.close();
  }

  private pump(): void {
    while (this.waiting.length && this.inFlight < this.o.maxCalls) {
      const batch = this.waiting.splice(0, this.o.maxMessages);
      this.inFlight++;
      this.stream
        .send(batch.map((w) => w.message))
        .then(
          (outcomes) =>
            batch.forEach((w, i) => {
              const outcome = outcomes[i];
              if (outcome) w.resolve(outcome);
              else w.reject(new Error(`EnqueueStream answered ${outcomes.length} outcomes for ${batch.length} messages`));
            }),
          (err: Error) => batch.forEach((w) => w.reject(err)),
        )
        .finally(() => {
          this.inFlight--;
          this.pump();
        });
    }
  }
}

export interface EnqueueStreamOptions {
  deadlineMs: number;
  /**
   * A stream is half-closed after this many batches, or once older than
   * maxAgeMs when the next batch comes, and the next batch opens a new one:
   * the channel spreads streams over the queue's replicas as it spreads
   * calls, and no stream outlives the server's maximum connection age.
   */
  batchesPerStream: number;
  maxAgeMs: number;
}

interface Batch {
  seq: number;
  messages: EnqueueMessage[];
  resolve(outcomes: EnqueueOutcome[]): void;
  reject(err: Error): void;
  timer: NodeJS.Timeout;
  deadline: number;
  /** Times it was sent (again after a stream ended with it unread). */
  sends: number;
  stream?: OpenStream;
}

interface OpenStream {
  call: grpc.ClientDuplexStream<EnqueueStreamRequest, EnqueueStreamResponse>;
  pending: Map<number, Batch>;
  sent: number;
  openedAt: number;
}

/** After UNIMPLEMENTED (a queue older than EnqueueStream, mid-upgrade), batches go as EnqueueBatch calls for this long. */
const UNARY_FALLBACK_MS = 60_000;
/** Sends of one batch at most (a stream that ended with it unread is not a failure; a queue that keeps doing that is). */
const MAX_SENDS = 3;

/**
 * EnqueueBatch over one long-lived EnqueueStream. Each batch is a request
 * with its own seq and deadline; its response settles it. How a stream ends
 * decides what its unanswered batches become: with OK (the queue shutting
 * down: it answered every request it read) they were never read and go
 * again on a new stream; UNIMPLEMENTED (a queue that has no EnqueueStream)
 * sends them, and the next batches for a while, as EnqueueBatch calls; any
 * other end fails them, as a failed call would (their outcome is unknown:
 * ingress answers 451 and the client sends again). A batch past its
 * deadline fails, and its stream is cancelled (the queue behind it is stuck
 * or far behind: the next batches go on a new stream).
 */
export class EnqueueStreamClient {
  private current: OpenStream | undefined;
  private seq = 0;
  private unaryUntil = 0;

  constructor(
    private readonly queue: QueueClient,
    private readonly o: EnqueueStreamOptions,
  ) {}

  send(messages: EnqueueMessage[]): Promise<EnqueueOutcome[]> {
    return new Promise((resolve, reject) => {
      const batch: Batch = {
        seq: ++this.seq,
        messages,
        resolve,
        reject,
        deadline: Date.now() + this.o.deadlineMs,
        sends: 0,
        timer: setTimeout(() => this.expire(batch), this.o.deadlineMs),
      };
      this.dispatch(batch);
    });
  }

  /** Half-closes the current stream; the queue ends it once its batches are answered. */
  close(): void {
    const s = this.current;
    this.current = undefined;
    s?.call.end();
  }

  private dispatch(batch: Batch): void {
    if (++batch.sends > MAX_SENDS) {
      return this.fail(batch, new Error(`EnqueueStream: the queue ended ${MAX_SENDS} streams without reading this batch`));
    }
    if (Date.now() < this.unaryUntil) {
      batch.stream = undefined;
      // Its messages carry their own traces; the call belongs to none of them (as the stream, below).
      untraced(() => call(this.queue.enqueueBatch, this.queue, { messages: batch.messages }, Math.max(1, batch.deadline - Date.now()))).then(
        (res) => this.settle(batch, res.outcomes),
        (err: Error) => this.fail(batch, err),
      );
      return;
    }
    const s = this.streamForNext();
    batch.stream = s;
    s.pending.set(batch.seq, batch);
    s.call.write({ seq: batch.seq, messages: batch.messages });
    if (++s.sent >= this.o.batchesPerStream) this.close();
  }

  private streamForNext(): OpenStream {
    if (this.current && Date.now() - this.current.openedAt > this.o.maxAgeMs) this.close();
    if (this.current) return this.current;
    // Each message carries its own trace context; the stream belongs to no
    // message's trace and is no trace of its own (a root span on the queue
    // for every stream): a not-sampled traceparent, see untracedContext.
    const c = untraced(() => this.queue.enqueueStream({ deadline: Infinity }));
    const s: OpenStream = { call: c, pending: new Map(), sent: 0, openedAt: Date.now() };
    c.on('data', (res: EnqueueStreamResponse) => {
      const batch = s.pending.get(res.seq);
      if (batch) this.settle(batch, res.outcomes);
    });
    // 'status' comes after the last response; a failed stream also emits 'error' (handled through 'status').
    c.on('status', (status: grpc.StatusObject) => this.ended(s, status));
    c.on('error', () => undefined);
    this.current = s;
    return s;
  }

  private ended(s: OpenStream, status: grpc.StatusObject): void {
    if (this.current === s) this.current = undefined;
    const left = [...s.pending.values()];
    s.pending.clear();
    if (status.code === grpc.status.UNIMPLEMENTED) this.unaryUntil = Date.now() + UNARY_FALLBACK_MS;
    if (status.code === grpc.status.OK || status.code === grpc.status.UNIMPLEMENTED) {
      for (const b of left) this.dispatch(b);
      return;
    }
    const err = grpcError(status.code, `EnqueueStream: ${status.details}`);
    for (const b of left) this.fail(b, err);
  }

  private expire(batch: Batch): void {
    const s = batch.stream;
    this.fail(batch, grpcError(grpc.status.DEADLINE_EXCEEDED, `EnqueueStream: no answer within ${this.o.deadlineMs} ms`));
    if (s) {
      if (this.current === s) this.current = undefined;
      s.call.cancel();
    }
  }

  private settle(batch: Batch, outcomes: EnqueueOutcome[]): void {
    batch.stream?.pending.delete(batch.seq);
    clearTimeout(batch.timer);
    batch.resolve(outcomes);
  }

  private fail(batch: Batch, err: Error): void {
    batch.stream?.pending.delete(batch.seq);
    clearTimeout(batch.timer);
    batch.reject(err);
  }
}
