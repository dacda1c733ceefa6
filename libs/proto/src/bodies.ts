// Messages that carry a message body, encoded with the body copied once.
//
// The generated encoders write into one growing buffer: a 64 KiB body is
// copied into it, moved again as the buffer doubles and as each enclosing
// message's length is prepended (fork/join), then copied out by finish().
// Here everything but the body is encoded by the generated code, the body's
// key and length by the same wire writer, and the pieces are concatenated
// once. Field order on the wire does not matter to protobuf decoders; the
// body goes last.
import { makeGenericClientConstructor, type ChannelCredentials, type ClientOptions } from '@grpc/grpc-js';
import { BinaryReader, BinaryWriter, WireType } from '@bufbuild/protobuf/wire';
import { EnqueueMessage, QueueServiceService, type EnqueueBatchRequest, type EnqueueStreamRequest, type QueueServiceClient } from './gen/tern/v1/queue';

const EMPTY = Buffer.alloc(0);

/** The key and length of a length-delimited field. */
function delimitedKey(field: number, length: number): Uint8Array {
  return new BinaryWriter().tag(field, WireType.LengthDelimited).uint32(length).finish();
}

/** `encoded` (a message) with a bytes field appended after it; no field at all for an empty value, as the generated code does. */
export function appendBytesField(encoded: Uint8Array, field: number, value: Uint8Array | null | undefined): Uint8Array {
  if (!value?.length) return encoded;
  return Buffer.concat([encoded, delimitedKey(field, value.length), value]);
}

const REQUEST_MESSAGES_FIELD = 1; // EnqueueBatchRequest.messages
const MESSAGE_BODY_FIELD = 2; // EnqueueMessage.body
const STREAM_SEQ_FIELD = 2; // EnqueueStreamRequest.seq (its messages are field 1, as in EnqueueBatchRequest)

/**
 * An EnqueueMessage whose body may be given as pieces in `bodyParts` (then
 * `body` is ignored): ingress hands over the socket reads a body arrived
 * in, and encodeEnqueueBatch joins them once, into the request.
 */
export type EnqueueMessageParts = EnqueueMessage & { bodyParts?: readonly Uint8Array[] };

/** EnqueueBatchRequest on the wire, each body copied once (into the result). */
export function encodeEnqueueBatch(request: EnqueueBatchRequest): Buffer {
  return encodeMessages(request.messages, []);
}

/** EnqueueStreamRequest on the wire: its seq, then the messages as encodeEnqueueBatch writes them. */
export function encodeEnqueueStream(request: EnqueueStreamRequest): Buffer {
  const head = request.seq ? new BinaryWriter().uint32((STREAM_SEQ_FIELD << 3) | WireType.Varint).uint64(request.seq).finish() : EMPTY;
  return encodeMessages(request.messages, [head]);
}

/** `head` (encoded fields), then field 1: the messages, each body copied once. */
function encodeMessages(messages: EnqueueMessage[], head: Uint8Array[]): Buffer {
  const parts: Uint8Array[] = [...head];
  let total = head.reduce((n, p) => n + p.length, 0);
  for (const m of messages as EnqueueMessageParts[]) {
    const body = m.bodyParts ?? [m.body];
    const bodyLength = body.reduce((n, p) => n + p.length, 0);
    const rest = EnqueueMessage.encode({ ...m, body: EMPTY }).finish();
    const bodyKey = bodyLength ? delimitedKey(MESSAGE_BODY_FIELD, bodyLength) : EMPTY;
    const length = rest.length + bodyKey.length + bodyLength;
    const key = delimitedKey(REQUEST_MESSAGES_FIELD, length);
    parts.push(key, rest, bodyKey, ...body);
    total += key.length + length;
  }
  return Buffer.concat(parts, total);
}

const BODY_TAG = (MESSAGE_BODY_FIELD << 3) | WireType.LengthDelimited;

/**
 * EnqueueBatchRequest from the wire with each body a view into `wire`
 * instead of a copy (the generated decoder copies every bytes field). The
 * buffer grpc-js hands over holds one whole request and is not reused, so
 * the views stay valid; they keep it alive as long as any body is referenced.
 * Together the bodies often span one piece of `wire`, which the group commit
 * then sends to Postgres as it is (see packBytes).
 */
export function decodeEnqueueBatch(wire: Uint8Array): EnqueueBatchRequest {
  return { messages: decodeEnqueueStream(wire).messages };
}

/** EnqueueStreamRequest from the wire, bodies as views (see decodeEnqueueBatch). */
export function decodeEnqueueStream(wire: Uint8Array): EnqueueStreamRequest {
  const buf = Buffer.isBuffer(wire) ? wire : Buffer.from(wire.buffer, wire.byteOffset, wire.byteLength);
  const reader = new BinaryReader(buf);
  const messages: EnqueueMessage[] = [];
  let seq = 0;
  while (reader.pos < reader.len) {
    const [field, wireType] = reader.tag();
    if (field === REQUEST_MESSAGES_FIELD && wireType === WireType.LengthDelimited) {
      const length = reader.uint32();
      messages.push(decodeMessageWithBodyView(buf.subarray(reader.pos, reader.pos + length)));
      reader.pos += length;
    } else if (field === STREAM_SEQ_FIELD && wireType === WireType.Varint) {
      seq = Number(reader.uint64());
    } else {
      reader.skip(wireType, field);
    }
  }
  return { messages, seq };
}

/** One EnqueueMessage: the body field cut out as a view, the rest decoded by the generated decoder. */
function decodeMessageWithBodyView(m: Buffer): EnqueueMessage {
  const reader = new BinaryReader(m);
  const rest: Buffer[] = [];
  let restStart = 0;
  let body: Buffer = EMPTY;
  while (reader.pos < reader.len) {
    const fieldStart = reader.pos;
    const tag = reader.uint32();
    if (tag === BODY_TAG) {
      const length = reader.uint32();
      body = m.subarray(reader.pos, reader.pos + length);
      if (fieldStart > restStart) rest.push(m.subarray(restStart, fieldStart));
      reader.pos += length;
      restStart = reader.pos;
    } else {
      reader.skip((tag & 7) as WireType, tag >>> 3);
    }
  }
  if (reader.len > restStart) rest.push(m.subarray(restStart, reader.len));
  const message = EnqueueMessage.decode(rest.length === 1 ? rest[0]! : Buffer.concat(rest));
  message.body = body;
  return message;
}

/** The QueueService definition with EnqueueBatch and EnqueueStream requests serialized and read by the functions above; everything else as generated. */
export const QueueServiceBodyService = {
  ...QueueServiceService,
  enqueueBatch: { ...QueueServiceService.enqueueBatch, requestSerialize: encodeEnqueueBatch, requestDeserialize: decodeEnqueueBatch },
  enqueueStream: { ...QueueServiceService.enqueueStream, requestSerialize: encodeEnqueueStream, requestDeserialize: decodeEnqueueStream },
} as const;

/** A QueueService client whose EnqueueBatch and EnqueueStream requests copy each body once (the ingress' hot path). */
export const QueueServiceBodyClient = makeGenericClientConstructor(QueueServiceBodyService, 'tern.v1.QueueService') as unknown as {
  new (address: string, credentials: ChannelCredentials, options?: Partial<ClientOptions>): QueueServiceClient;
  service: typeof QueueServiceBodyService;
  serviceName: string;
};
