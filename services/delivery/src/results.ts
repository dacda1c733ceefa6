// Delivery results leave in batches: the results of jobs that finish close
// together go to JetStream as ONE DeliveryResults message (subject
// tern.results.batch), so the stream stores, delivers and has acknowledged
// one message for them instead of one each, and the queue applies them in one
// go. A job is acknowledged only after the message holding its result is
// stored (its PubAck), so a crash loses no result: an unacknowledged job is
// delivered again and its result published again.
import crypto from 'node:crypto';
import { ROOT_CONTEXT } from '@tern/telemetry';
import { SUBJECTS, type Bus } from '@tern/bus';
import { DeliveryResults, type DeliveryResult } from '@tern/proto';
import { Batcher } from '@tern/runtime';

export interface ResultPublisherOptions {
  /** Results per message at most. */
  maxResults: number;
  /** How long the first result of a batch waits for others (0: the end of the event-loop turn). */
  delayMs: number;
}

export class ResultPublisher {
  private readonly batcher: Batcher<DeliveryResult, void>;

  constructor(
    private readonly bus: Pick<Bus, 'publish'>,
    o: ResultPublisherOptions,
  ) {
    this.batcher = new Batcher({
      maxItems: o.maxResults,
      delayMs: o.delayMs,
      // Publishes are cheap to overlap; a batch that is not full waits its
      // delay even when no publish is running (that is what gathers results).
      concurrency: 8,
      flushWaitingWhenIdle: false,
      flush: (results) => this.publishBatch(results),
    });
  }

  /** Resolves once the message holding the result is stored by JetStream; rejects if it was not. */
  publish(result: DeliveryResult): Promise<void> {
    return this.batcher.add(result);
  }

  /** Publishes what is gathered and waits for the PubAcks. */
  drain(): Promise<void> {
    return this.batcher.drain();
  }

  private async publishBatch(results: DeliveryResult[]): Promise<void[]> {
    const data = DeliveryResults.encode({ results }).finish();
    // The results are of several jobs, each with its own trace: the message
    // carries none (each result names its job and queue id).
    await this.bus.publish(SUBJECTS.resultsBatch, data, { msgId: batchMsgId(results), ctx: ROOT_CONTEXT });
    return results.map(() => undefined);
  }
}

/**
 * The same jobs give the same id, so a republish of the same batch is
 * dropped by JetStream; a batch of other jobs, even starting with the same
 * one, is not.
 */
export function batchMsgId(results: DeliveryResult[]): string {
  if (results.length === 1) return `result:${results[0]!.jobId}`;
  const h = crypto.createHash('sha256');
  for (const r of results) h.update(r.jobId).update('\n');
  return `results:${h.digest('base64url')}`;
}
