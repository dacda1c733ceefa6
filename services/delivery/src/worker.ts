// One delivery job: resolve the next hop, stream the body from the queue into
// an SMTP transaction, and turn the replies into one result per recipient.
import net from 'node:net';
import {
  AttemptOutcome,
  BodyType,
  DsnNotify,
  DsnRet,
  ReadBodyRequest,
  RouteKind,
  type DeliveryJob,
  type DeliveryResult,
  type QueueServiceClient,
  type RecipientResult,
  type SmtpReply,
  type TlsInfo,
} from '@tern/proto';
import { grpc } from '@tern/grpc';
import type { Logger } from '@tern/telemetry';
import type { NextHop, NextHopResolver } from './nexthop';
import type { ConnectionPool } from './pool';
import { SessionError, syntheticReply, type ConnectOptions, type TransactionResult } from './smtp-client';

export interface WorkerDeps {
  logger: Logger;
  resolver: NextHopResolver;
  pool: ConnectionPool;
  queue: QueueServiceClient;
  worker: string;
  heloName: string;
  localAddress?: string;
  smtpPort: number;
  connectTimeoutMs: number;
  commandTimeoutMs: number;
  dataEndTimeoutMs: number;
  queueDeadlineMs: number;
}

/** The queue could not give us the body: not the destination's fault; retry the job later. */
export class BodyUnavailableError extends Error {
  override name = 'BodyUnavailableError';
}

const NOTIFY_WORD: Partial<Record<DsnNotify, string>> = {
  [DsnNotify.DSN_NOTIFY_NEVER]: 'NEVER',
  [DsnNotify.DSN_NOTIFY_SUCCESS]: 'SUCCESS',
  [DsnNotify.DSN_NOTIFY_FAILURE]: 'FAILURE',
  [DsnNotify.DSN_NOTIFY_DELAY]: 'DELAY',
};

function outcomeOf(code: number): AttemptOutcome {
  if (code >= 200 && code < 300) return AttemptOutcome.ATTEMPT_OUTCOME_DELIVERED;
  if (code >= 500) return AttemptOutcome.ATTEMPT_OUTCOME_FAILED;
  return AttemptOutcome.ATTEMPT_OUTCOME_DEFERRED;
}

async function* inlineBody(body: Uint8Array): AsyncGenerator<Buffer> {
  yield Buffer.from(body.buffer, body.byteOffset, body.byteLength);
}

async function* readBody(deps: WorkerDeps, queueId: string): AsyncGenerator<Buffer> {
  const stream = deps.queue.readBody(ReadBodyRequest.fromPartial({ queueId }), new grpc.Metadata(), {
    deadline: Date.now() + deps.queueDeadlineMs,
  });
  try {
    for await (const part of stream as AsyncIterable<{ chunk: Buffer }>) yield Buffer.from(part.chunk);
  } catch (err) {
    throw new BodyUnavailableError(`reading the body of ${queueId} from the queue failed: ${(err as Error).message}`);
  } finally {
    stream.cancel();
  }
}

/** Delivers a job. Returns the result to publish, or undefined when the job's lease has lapsed. */
export async function deliver(deps: WorkerDeps, job: DeliveryJob): Promise<DeliveryResult | undefined> {
  const startedAt = new Date();
  if (job.leaseExpiresAt && job.leaseExpiresAt.getTime() < Date.now()) {
    // The queue has taken these recipients back; a late attempt could deliver twice.
    deps.logger.info({ queue_id: job.queueId, job_id: job.jobId }, 'job lease expired before it was taken; dropping it');
    return undefined;
  }
  const base: DeliveryResult = {
    jobId: job.jobId,
    queueId: job.queueId,
    destination: job.destination,
    recipients: [],
    remoteHost: '',
    remoteIp: '',
    tls: undefined,
    startedAt,
    durationMs: 0,
    worker: deps.worker,
    destinationFailure: false,
  };
  const all = (reply: SmtpReply, destinationFailure = false): DeliveryResult => ({
    ...base,
    recipients: job.recipients.map((r) => ({ recipientId: r.recipientId, outcome: outcomeOf(reply.code), reply, remoteDsn: false })),
    destinationFailure,
    durationMs: Date.now() - startedAt.getTime(),
  });

  let hops: NextHop[];
  const route = job.route;
  if (route && route.kind === RouteKind.ROUTE_KIND_SMARTHOST && route.target) {
    const m = /^\[?([^\]]+?)\]?(?::(\d+))?$/.exec(route.target);
    const host = m?.[1] ?? route.target;
    const port = Number(m?.[2] ?? 25);
    const addresses = net.isIP(host) ? [host] : await deps.resolver.resolve(host).then((r) => (r.ok ? r.hops.flatMap((h) => h.addresses) : []));
    if (!addresses.length) return all(syntheticReply(451, '4.4.3', `smart host ${route.target} does not resolve`), true);
    hops = [{ name: host, addresses, port }];
  } else if (route && route.kind === RouteKind.ROUTE_KIND_LMTP) {
    return all(syntheticReply(451, '4.3.5', `route for ${job.destination} is LMTP, which this delivery version does not speak yet`));
  } else {
    const resolution = await deps.resolver.resolve(job.destination);
    if (!resolution.ok) return all(resolution.reply, resolution.temporary);
    hops = resolution.hops;
  }

  const env = job.envelope;
  const ret = env?.ret === DsnRet.DSN_RET_FULL ? 'FULL' : env?.ret === DsnRet.DSN_RET_HDRS ? 'HDRS' : '';
  const bodyType = env?.bodyType === BodyType.BODY_TYPE_8BITMIME ? '8BITMIME' : env?.bodyType === BodyType.BODY_TYPE_BINARYMIME ? 'BINARYMIME' : '7BIT';
  let lastFailure: SessionError | undefined;

  for (const hop of hops) {
    for (const address of hop.addresses) {
      const opts: ConnectOptions = {
        address,
        port: hop.port,
        hostName: hop.name,
        heloName: deps.heloName,
        localAddress: deps.localAddress,
        connectTimeoutMs: deps.connectTimeoutMs,
        commandTimeoutMs: deps.commandTimeoutMs,
        dataEndTimeoutMs: deps.dataEndTimeoutMs,
        starttls: true,
      };
      let client;
      try {
        client = await deps.pool.acquire(opts);
      } catch (err) {
        if (!(err instanceof SessionError)) throw err;
        // A 5xx greeting is final for the message; anything else: next host.
        if (err.stage === 'greeting' && err.reply.code >= 500) return { ...all(err.reply), remoteHost: hop.name, remoteIp: address };
        lastFailure = err;
        deps.logger.info({ queue_id: job.queueId, host: hop.name, ip: address, err: err.message }, 'next hop unusable; trying the next one');
        continue;
      }
      const remote = { remoteHost: hop.name, remoteIp: address, tls: client.tls as TlsInfo };
      // Checks that fail before anything is sent.
      const sizeLimit = Number(client.extensions.get('SIZE') || 0);
      if (sizeLimit > 0 && job.size > sizeLimit) {
        deps.pool.release(client, opts, true);
        return { ...all(syntheticReply(552, '5.3.4', `message size ${job.size} exceeds the limit of ${sizeLimit} bytes at ${hop.name}`)), ...remote };
      }
      if (env?.smtputf8 && !client.extensions.has('SMTPUTF8')) {
        deps.pool.release(client, opts, true);
        return { ...all(syntheticReply(553, '5.6.7', `${hop.name} does not support SMTPUTF8, which this message needs`)), ...remote };
      }
      let tx: TransactionResult;
      try {
        tx = await client.send({
          sender: env?.sender ?? '',
          recipients: job.recipients.map((r) => ({ address: r.address, orcpt: r.orcpt, notify: r.notify.map((n) => NOTIFY_WORD[n]).filter((w): w is string => !!w) })),
          size: job.size,
          bodyType,
          smtputf8: !!env?.smtputf8,
          ret,
          envid: env?.envid ?? '',
          // A small body travels in the job (DeliveryJob.body); a big one is read from the queue.
          body: job.body.length ? inlineBody(job.body) : readBody(deps, job.queueId),
        });
      } catch (err) {
        client.destroy();
        if (err instanceof BodyUnavailableError) throw err;
        if (!(err instanceof SessionError)) throw err;
        // The session broke mid-transaction (421, timeout, lost connection): defer, blame the destination.
        return { ...all(err.reply, true), ...remote };
      }
      const remoteDsn = client.extensions.has('DSN');
      deps.pool.release(client, opts, true);
      const recipients: RecipientResult[] = job.recipients.map((r, i) => {
        const rcpt = tx.rcpts[i] ?? tx.mail;
        let reply: SmtpReply = rcpt;
        if (tx.mail.code !== 250) reply = tx.mail;
        else if (rcpt.code >= 200 && rcpt.code < 300) reply = tx.data ?? syntheticReply(451, '4.3.0', 'no reply to DATA');
        return { recipientId: r.recipientId, outcome: outcomeOf(reply.code), reply, remoteDsn };
      });
      return { ...base, ...remote, recipients, durationMs: Date.now() - startedAt.getTime() };
    }
  }
  const reply = lastFailure?.reply ?? syntheticReply(451, '4.4.1', `no next hop of ${job.destination} answered`);
  return all(reply, true);
}
