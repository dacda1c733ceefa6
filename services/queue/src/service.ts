// The QueueService gRPC implementation: thin handlers over the modules.
import { isGrpcError, toServiceError, type grpc } from '@tern/grpc';
import { errorMessage } from '@tern/runtime';
import { MessageNotFoundError, RpcFailedError } from './errors';
import type { QueueServiceServer } from '@tern/proto';
import type { Logger } from '@tern/telemetry';
import { readBodyHandler } from './body';
import type { Enqueuer } from './enqueue';
import { parseQueueId } from './ids';
import { getMessage } from './messages';
import type { BounceRules } from './bounce-rules';
import type { Operations } from './operations';
import type { Pool } from '@tern/db';

export interface StatusSource {
  status(): { accepting: boolean; reason: string; queuedRecipients: number };
}

export interface ServiceDeps {
  /** The message path's pool (ReadBody). */
  pool: Pool;
  /** Operator queries. */
  opsPool: Pool;
  logger: Logger;
  enqueuer: Enqueuer;
  ops: Operations;
  bounceRules: BounceRules;
  status: StatusSource;
}

type Unary<Req, Res> = (call: grpc.ServerUnaryCall<Req, Res>, cb: grpc.sendUnaryData<Res>) => void;

/** Runs an async unary handler; a named error answers with its status, anything else UNAVAILABLE (RpcFailedError). */
function unary<Req, Res>(logger: Logger, name: string, fn: (req: Req) => Promise<Res>): Unary<Req, Res> {
  return (call, cb) => {
    fn(call.request).then(
      (res) => cb(null, res),
      (err: unknown) => {
        if (!isGrpcError(err)) logger.error({ err: errorMessage(err), rpc: name }, 'queue RPC failed');
        cb(toServiceError(err, (message, cause) => new RpcFailedError(name, message, cause)));
      },
    );
  };
}

export function createQueueService(d: ServiceDeps): QueueServiceServer {
  const { logger, ops } = d;
  return {
    enqueue: d.enqueuer.handler,
    enqueueBatch: d.enqueuer.batchHandler,
    enqueueStream: d.enqueuer.streamHandler,
    readBody: readBodyHandler(d.pool, logger),
    getMessage: unary(logger, 'GetMessage', async (req) => {
      const id = parseQueueId(req.queueId);
      const message = await getMessage(d.opsPool, id, req.includeHeaders);
      if (!message) throw new MessageNotFoundError(req.queueId);
      return { message };
    }),
    listMessages: unary(logger, 'ListMessages', (req) => ops.listMessages(req)),
    queueSummary: unary(logger, 'QueueSummary', () => ops.summary()),
    applyAction: unary(logger, 'ApplyAction', (req) => ops.applyAction(req)),
    suspendDestination: unary(logger, 'SuspendDestination', (req) => ops.suspend(req)),
    resumeDestination: unary(logger, 'ResumeDestination', (req) => ops.resume(req)),
    listDestinations: unary(logger, 'ListDestinations', () => ops.listDestinations()),
    listRoutes: unary(logger, 'ListRoutes', () => ops.listRoutes()),
    putRoute: unary(logger, 'PutRoute', (req) => ops.putRoute(req)),
    deleteRoute: unary(logger, 'DeleteRoute', (req) => ops.deleteRoute(req)),
    listBounceRules: unary(logger, 'ListBounceRules', async () => ({ rules: d.bounceRules.list() })),
    putBounceRule: unary(logger, 'PutBounceRule', async (req) => ({ rule: await d.bounceRules.put(req) })),
    deleteBounceRule: unary(logger, 'DeleteBounceRule', async (req) => ({ deleted: await d.bounceRules.delete(req) })),
    status: unary(logger, 'Status', async () => d.status.status()),
  };
}
