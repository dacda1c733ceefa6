// Typed gRPC client of the queue (ts-proto definitions with grpc-js generic
// clients), with trace context in metadata (libs/grpc's interceptor).
import { createClient, grpc } from '@tern/grpc';
import { QueueServiceService, type EnqueueRequest, type EnqueueResponse, type ReadBodyRequest, type ReadBodyResponse } from '@tern/proto';

export interface QueueClient extends grpc.Client {
  readBody(req: ReadBodyRequest, md: grpc.Metadata, opts: Partial<grpc.CallOptions>): grpc.ClientReadableStream<ReadBodyResponse>;
  enqueue(
    md: grpc.Metadata,
    opts: Partial<grpc.CallOptions>,
    cb: (err: grpc.ServiceError | null, res: EnqueueResponse) => void,
  ): grpc.ClientWritableStream<EnqueueRequest>;
}

const QueueCtor = grpc.makeGenericClientConstructor(QueueServiceService, 'tern.v1.QueueService');

export function queueClient(target: string): QueueClient {
  // Streams get their own deadline per call.
  return createClient(QueueCtor, target, { deadlineMs: 0 }) as unknown as QueueClient;
}
