// A minimal stand-in for the delivery service, used by the crash tests only
// when TERN_CRASH_STAND_IN_DELIVERY=1 (the real services/delivery was not
// built yet when these tests were written). It speaks the same contracts as
// the real one: takes DeliveryJobs from the shared durable consumer
// `delivery`, drops jobs whose lease has ended, resolves the MX through
// TERN_DNS_SERVERS, streams the body from QueueService.ReadBody, speaks SMTP
// to <mx>:TERN_SMTP_PORT, publishes one DeliveryResult per job
// (Nats-Msg-Id = "<job id>.result") and acks the job after the publish.
//
// Run as a separate process: node --import tsx tests/crash/stand-in-delivery.ts
import dns from 'node:dns';
import http from 'node:http';
import os from 'node:os';
import { PassThrough } from 'node:stream';
import * as grpc from '@grpc/grpc-js';
import nodemailer from 'nodemailer';
import pino from 'pino';
import { Bus, SUBJECTS } from '@tern/bus';
import { AttemptOutcome, DeliveryJob, DeliveryResult, QueueServiceClient, ReadBodyRequest, type RecipientResult } from '@tern/proto';

const env = (k: string, d?: string): string => {
  const v = process.env[k] ?? d;
  if (v === undefined) throw new Error(`${k} is required`);
  return v;
};

const logger = pino({ level: process.env.TERN_LOG_LEVEL ?? 'info', base: { service: 'stand-in-delivery' } });
const resolver = new dns.promises.Resolver({ timeout: 2_000, tries: 2 });
const [dnsHost, dnsPort] = env('TERN_DNS_SERVERS').split(/:(?=\d+$)/);
resolver.setServers([`${dnsHost}:${dnsPort ?? 53}`]);
const smtpPort = Number(env('TERN_SMTP_PORT', '25'));
const worker = `stand-in-${os.hostname()}-${process.pid}`;
const queue = new QueueServiceClient(env('TERN_QUEUE_ADDR'), grpc.credentials.createInsecure());

async function nextHop(domain: string): Promise<{ host: string; ip: string }> {
  const mx = (await resolver.resolveMx(domain)).sort((a, b) => a.priority - b.priority)[0];
  const host = mx ? mx.exchange : domain;
  const [ip] = await resolver.resolve4(host);
  if (!ip) throw new Error(`no address for ${host}`);
  return { host, ip };
}

function readBody(queueId: string): PassThrough {
  const out = new PassThrough();
  const call = queue.readBody(ReadBodyRequest.fromPartial({ queueId }), { deadline: Date.now() + 30_000 });
  call.on('data', (r: { chunk: Uint8Array }) => out.write(Buffer.from(r.chunk)));
  call.on('end', () => out.end());
  call.on('error', (err) => out.destroy(err));
  return out;
}

async function attempt(job: DeliveryJob): Promise<DeliveryResult> {
  const startedAt = new Date();
  const base = { jobId: job.jobId, queueId: job.queueId, destination: job.destination, startedAt, worker };
  const all = (outcome: AttemptOutcome, code: number, text: string, destinationFailure: boolean, host = '', ip = '') =>
    DeliveryResult.fromPartial({
      ...base,
      remoteHost: host,
      remoteIp: ip,
      destinationFailure,
      durationMs: Date.now() - startedAt.getTime(),
      recipients: job.recipients.map((r) => ({ recipientId: r.recipientId, outcome, reply: { code, enhanced: '', text } })),
    });
  let hop: { host: string; ip: string };
  try {
    hop = await nextHop(job.destination);
  } catch (err) {
    return all(AttemptOutcome.ATTEMPT_OUTCOME_DEFERRED, 0, `DNS: ${(err as Error).message}`, true);
  }
  const transport = nodemailer.createTransport({
    host: hop.ip,
    port: smtpPort,
    secure: false,
    ignoreTLS: true,
    name: process.env.TERN_HOSTNAME ?? 'stand-in.test',
    connectionTimeout: 5_000,
    greetingTimeout: 5_000,
    socketTimeout: 10_000,
  } as Parameters<typeof nodemailer.createTransport>[0]);
  const to = job.recipients.map((r) => r.address);
  try {
    const info = await transport.sendMail({ envelope: { from: job.envelope?.sender ?? '', to }, raw: readBody(job.queueId) });
    const accepted = new Set((info.accepted as string[]).map((a) => a.toLowerCase()));
    const rejected = new Map<string, { responseCode?: number; response?: string }>();
    for (const e of (info as unknown as { rejectedErrors?: { recipient: string; responseCode?: number; response?: string }[] }).rejectedErrors ?? []) {
      rejected.set(e.recipient.toLowerCase(), e);
    }
    const code = Number(/^(\d{3})/.exec(info.response)?.[1] ?? 250);
    const recipients: RecipientResult[] = job.recipients.map((r) => {
      const a = r.address.toLowerCase();
      if (accepted.has(a)) return { recipientId: r.recipientId, outcome: AttemptOutcome.ATTEMPT_OUTCOME_DELIVERED, reply: { code, enhanced: '2.0.0', text: info.response }, remoteDsn: true };
      const e = rejected.get(a);
      const c = e?.responseCode ?? 451;
      return {
        recipientId: r.recipientId,
        outcome: c >= 500 ? AttemptOutcome.ATTEMPT_OUTCOME_FAILED : AttemptOutcome.ATTEMPT_OUTCOME_DEFERRED,
        reply: { code: c, enhanced: /\b([245]\.\d+\.\d+)\b/.exec(e?.response ?? '')?.[1] ?? '', text: e?.response ?? '' },
        remoteDsn: false,
      };
    });
    return DeliveryResult.fromPartial({ ...base, remoteHost: hop.host, remoteIp: hop.ip, durationMs: Date.now() - startedAt.getTime(), recipients });
  } catch (err) {
    const e = err as { responseCode?: number; response?: string; code?: string; rejectedErrors?: { recipient: string; responseCode?: number; response?: string }[] };
    if (e.code === 'EENVELOPE' && e.rejectedErrors?.length) {
      const byRcpt = new Map(e.rejectedErrors.map((x) => [x.recipient.toLowerCase(), x]));
      return DeliveryResult.fromPartial({
        ...base,
        remoteHost: hop.host,
        remoteIp: hop.ip,
        durationMs: Date.now() - startedAt.getTime(),
        recipients: job.recipients.map((r) => {
          const x = byRcpt.get(r.address.toLowerCase());
          const c = x?.responseCode ?? 451;
          return {
            recipientId: r.recipientId,
            outcome: c >= 500 ? AttemptOutcome.ATTEMPT_OUTCOME_FAILED : AttemptOutcome.ATTEMPT_OUTCOME_DEFERRED,
            reply: { code: c, enhanced: /\b([245]\.\d+\.\d+)\b/.exec(x?.response ?? '')?.[1] ?? '', text: x?.response ?? '' },
          };
        }),
      });
    }
    const c = e.responseCode ?? 0;
    if (c >= 500) return all(AttemptOutcome.ATTEMPT_OUTCOME_FAILED, c, e.response ?? '', false, hop.host, hop.ip);
    return all(AttemptOutcome.ATTEMPT_OUTCOME_DEFERRED, c, e.response ?? (err as Error).message, !c, hop.host, hop.ip);
  } finally {
    transport.close();
  }
}

async function main(): Promise<void> {
  const bus = await Bus.connect({ url: env('TERN_NATS_URL'), name: worker, logger });
  await bus.ensureTopology(['delivery']);
  const consumption = bus.consume(
    'delivery',
    async (msg) => {
      const job = DeliveryJob.decode(msg.data);
      if (job.leaseExpiresAt && job.leaseExpiresAt.getTime() <= Date.now()) {
        logger.warn({ job_id: job.jobId, queue_id: job.queueId }, 'job lease ended before it was taken; dropped');
        msg.ack();
        return;
      }
      const result = await attempt(job);
      // The mail went out: keep trying to publish the result (NATS may be
      // restarting) rather than letting the job run again.
      for (let i = 0; ; i++) {
        try {
          await bus.publish(SUBJECTS.results, DeliveryResult.encode(result).finish(), { msgId: `${job.jobId}.result` });
          break;
        } catch (err) {
          if (i >= 60) throw err;
          logger.warn({ job_id: job.jobId, err: (err as Error).message }, 'result publish failed; retrying');
          msg.working();
          await new Promise((r) => setTimeout(r, 500));
        }
      }
      logger.info({ job_id: job.jobId, queue_id: job.queueId, outcomes: result.recipients.map((r) => r.outcome) }, 'job done');
      msg.ack();
    },
    { concurrency: 16, retryDelayMs: 1_000 },
  );
  const [host, port] = env('TERN_METRICS_LISTEN').split(/:(?=\d+$)/);
  const server = http.createServer((_req, res) => res.end('ok')).listen(Number(port), host);
  logger.info({ worker }, 'stand-in delivery consuming');
  const stop = async () => {
    await consumption.stop();
    await bus.close();
    server.close();
    queue.close();
    process.exit(0);
  };
  process.once('SIGTERM', () => void stop());
  process.once('SIGINT', () => void stop());
}

main().catch((err) => {
  logger.fatal({ err: (err as Error).message }, 'stand-in delivery failed');
  process.exit(1);
});
