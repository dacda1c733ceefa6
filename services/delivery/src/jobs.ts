// One delivery job from the `delivery` consumer: decode it, deliver it,
// publish its result, then ack. Delivery owns nothing durable, so the job
// is acked only after its result is stored by JetStream; a failure on our
// side naks it for a redelivery, a job that cannot be decoded is termed
// (its lease in the queue brings its recipients back), and a long session
// reports progress so the ack timer does not run out under it.
import type { BusMessage } from '@tern/bus';
import { AttemptOutcome, DeliveryJob, type DeliveryResult } from '@tern/proto';
import { errorMessage } from '@tern/runtime';
import { context, withSpan, type Logger, type Meter, type Tracer } from '@tern/telemetry';
import { deliver, BodyUnavailableError, type WorkerDeps } from './worker';

/** How often a job in progress tells JetStream it is still being worked on (the consumer's ack wait is longer). */
const PROGRESS_MS = 20_000;

export interface JobHandlerDeps {
  logger: Logger;
  tracer: Tracer;
  worker: WorkerDeps;
  /** Resolves once the result is stored (ResultPublisher.publish). */
  publish(result: DeliveryResult): Promise<void>;
  metrics: { recipients: ReturnType<Meter['createCounter']>; seconds: ReturnType<Meter['createHistogram']> };
}

/** The consumer's handler: one job, acked, naked or termed before it returns. */
export function jobHandler(deps: JobHandlerDeps): (msg: BusMessage) => Promise<void> {
  const { logger, tracer, worker, metrics } = deps;
  return async function handle(msg: BusMessage): Promise<void> {
    let job: DeliveryJob;
    try {
      job = DeliveryJob.decode(msg.data);
    } catch (err) {
      logger.error({ msg_id: msg.msgId, err: errorMessage(err) }, 'undecodable delivery job dropped (its lease brings the recipients back)');
      msg.term('undecodable');
      return;
    }
    // Long sessions keep the ack timer from running out.
    const progress = setInterval(() => msg.working(), PROGRESS_MS);
    const started = performance.now();
    try {
      await withSpan(
        tracer,
        'delivery.attempt',
        { 'tern.queue_id': job.queueId, 'tern.job_id': job.jobId, 'tern.destination': job.destination, 'tern.recipients': job.recipients.length },
        async (span) => {
          const result = await deliver(worker, job);
          if (result) {
            span.setAttribute('net.peer.name', result.remoteHost);
            span.setAttribute('net.peer.ip', result.remoteIp);
            await deps.publish(result);
            for (const r of result.recipients) metrics.recipients.add(1, { outcome: AttemptOutcome[r.outcome] ?? 'unknown' });
            logger.info(
              {
                event: 'delivery_attempt',
                queue_id: job.queueId,
                job_id: job.jobId,
                destination: job.destination,
                remote: `${result.remoteHost}[${result.remoteIp}]`,
                tls: result.tls?.used ?? false,
                outcomes: result.recipients.map((r) => `${r.reply?.code ?? 0}`).join(','),
                reply: result.recipients[0]?.reply?.text,
                ms: result.durationMs,
              },
              'delivery attempt finished',
            );
          }
        },
        msg.ctx,
      );
      msg.ack();
      metrics.seconds.record((performance.now() - started) / 1000);
    } catch (err) {
      // Ours, not the destination's (queue unreachable, NATS publish failed): redeliver the job later.
      const delay = err instanceof BodyUnavailableError ? 5_000 : 10_000;
      // Outside the attempt's span (it has ended), still in the message's trace.
      context.with(msg.ctx, () =>
        logger.warn({ queue_id: job.queueId, job_id: job.jobId, err: errorMessage(err), retry_ms: delay }, 'delivery job failed on our side; it will be retried'),
      );
      msg.nak(delay);
    } finally {
      clearInterval(progress);
    }
  };
}
