// Metric instrument types, from the telemetry library's Meter.
import { TopLabels, type Meter } from '@tern/telemetry';

export type Counter = ReturnType<Meter['createCounter']>;
export type Histogram = ReturnType<Meter['createHistogram']>;

/** The queue's instruments, made once; destination labels are bounded by TopLabels (the busiest N, the rest "other"). */
export function createQueueMetrics(meter: Meter, topDestinations: number) {
  return {
    destinations: new TopLabels(topDestinations),
    messages: meter.createCounter('tern_queue_messages_enqueued_total', { description: 'Messages committed by Enqueue, by origin' }),
    recipientsEnqueued: meter.createCounter('tern_queue_recipients_enqueued_total', { description: 'Recipients committed by Enqueue, by destination' }),
    batch: meter.createHistogram('tern_queue_commit_batch_size', { description: 'Messages per group commit' }),
    published: meter.createCounter('tern_queue_outbox_published_total', { description: 'Outbox rows published to JetStream' }),
    dispatched: meter.createCounter('tern_queue_jobs_dispatched_total', { description: 'Delivery jobs dispatched' }),
    dispatchLag: meter.createHistogram('tern_queue_dispatch_lag_seconds', {
      description: 'Recipient due (next attempt time) to its job dispatched, for jobs the scheduler claims (retries, released holds); first attempts leave with their commit',
      unit: 's',
    }),
    applied: meter.createCounter('tern_queue_results_applied_total', { description: 'Recipient results applied, by new state and destination' }),
    resultLag: meter.createHistogram('tern_queue_result_apply_lag_seconds', { description: 'Delivery attempt finished to its result committed by the queue', unit: 's' }),
    expired: meter.createCounter('tern_queue_recipients_expired_total', { description: 'Recipients past their lifetime (failed with 4.4.7), by destination' }),
  };
}

export type QueueMetrics = ReturnType<typeof createQueueMetrics>;
