// Typed gRPC clients of policy and queue (ts-proto service definitions with
// grpc-js generic clients), with default deadlines and trace context in
// metadata (libs/grpc's interceptor).
import { createClient, grpc } from '@tern/grpc';
import {
  PolicyServiceService,
  QueueServiceService,
  type AuthenticateRequest,
  type AuthenticateResponse,
  type CheckRequest,
  type CheckResponse,
  type EnqueueRequest,
  type EnqueueResponse,
  type StatusRequest,
  type StatusResponse,
} from '@tern/proto';

type Unary<Req, Res> = (
  req: Req,
  md: grpc.Metadata,
  opts: Partial<grpc.CallOptions>,
  cb: (err: grpc.ServiceError | null, res: Res) => void,
) => grpc.ClientUnaryCall;

export interface PolicyClient extends grpc.Client {
  check: Unary<CheckRequest, CheckResponse>;
  authenticate: Unary<AuthenticateRequest, AuthenticateResponse>;
}

export interface QueueClient extends grpc.Client {
  status: Unary<StatusRequest, StatusResponse>;
  enqueue(
    md: grpc.Metadata,
    opts: Partial<grpc.CallOptions>,
    cb: (err: grpc.ServiceError | null, res: EnqueueResponse) => void,
  ): grpc.ClientWritableStream<EnqueueRequest>;
}

const PolicyCtor = grpc.makeGenericClientConstructor(PolicyServiceService, 'tern.v1.PolicyService');
const QueueCtor = grpc.makeGenericClientConstructor(QueueServiceService, 'tern.v1.QueueService');

export function policyClient(target: string, deadlineMs: number): PolicyClient {
  return createClient(PolicyCtor, target, { deadlineMs }) as unknown as PolicyClient;
}

export function queueClient(target: string, deadlineMs: number): QueueClient {
  return createClient(QueueCtor, target, { deadlineMs }) as unknown as QueueClient;
}

/** Promise form of a unary call with its own deadline. */
export function call<Req, Res>(fn: Unary<Req, Res>, self: grpc.Client, req: Req, deadlineMs: number): Promise<Res> {
  return new Promise((resolve, reject) => {
    fn.call(self, req, new grpc.Metadata(), { deadline: Date.now() + deadlineMs }, (err, res) => (err ? reject(err) : resolve(res)));
  });
}
