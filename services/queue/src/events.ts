// Lifecycle events (proto/tern/v1/lifecycle.proto) as outbox rows: written in
// the transaction that makes the state change, so an event is published if
// and only if its change committed (the relay publishes it at least once;
// JetStream's duplicate window drops a republish by its Nats-Msg-Id). One row
// per event type per transaction keeps the cost per group commit, not per
// message.
import crypto from 'node:crypto';
import { encodeLifecycleEvents, eventSubject, type EventFormat } from '@tern/bus';
import { LifecycleEventType, type LifecycleEvent, type SmtpReply } from '@tern/proto';
import type { OutboxRow } from './outbox';

export type { EventFormat };

export interface EventSettings {
  /** Write lifecycle events at all (TERN_QUEUE_EVENTS). */
  enabled: boolean;
  format: EventFormat;
}

/** The subject token of each type: tern.events.<name>. */
const TYPE_NAMES = new Map<LifecycleEventType, string>(
  Object.entries(LifecycleEventType)
    .filter(([, v]) => typeof v === 'number' && v > LifecycleEventType.LIFECYCLE_EVENT_TYPE_UNSPECIFIED)
    .map(([k, v]) => [v as LifecycleEventType, k.replace('LIFECYCLE_EVENT_TYPE_', '').toLowerCase()]),
);

export function eventTypeName(t: LifecycleEventType): string {
  return TYPE_NAMES.get(t) ?? 'unspecified';
}

/** What a state change says; ids and time are filled in by eventRows. */
export interface EventInput {
  type: LifecycleEventType;
  queueId: string;
  sender: string;
  recipient?: string;
  recipients?: string[];
  destination?: string;
  reply?: SmtpReply;
  remoteHost?: string;
  bounceClass?: string;
  operator?: string;
  reason?: string;
  attemptCount?: number;
  size?: number;
  /** The message's stored trace carrier (traceparent), for trace_id. */
  trace?: Record<string, string> | null;
}

function traceIdOf(carrier: Record<string, string> | null | undefined): string {
  const tp = carrier?.traceparent;
  return tp && /^[\da-f]{2}-[\da-f]{32}-/.test(tp) ? tp.slice(3, 35) : '';
}

/** Outbox rows for `inputs` (none when events are off), one per event type. */
export function eventRows(settings: EventSettings, inputs: EventInput[], at = new Date()): OutboxRow[] {
  if (!settings.enabled || !inputs.length) return [];
  const byType = new Map<LifecycleEventType, LifecycleEvent[]>();
  for (const i of inputs) {
    // Every field given: an object literal costs a fraction of fromPartial's copy (one event per recipient per result).
    const e: LifecycleEvent = {
      eventId: crypto.randomUUID(),
      type: i.type,
      at,
      queueId: i.queueId,
      sender: i.sender,
      recipient: i.recipient ?? '',
      recipients: i.recipients ?? [],
      destination: i.destination ?? '',
      reply: i.reply,
      remoteHost: i.remoteHost ?? '',
      bounceClass: i.bounceClass ?? '',
      operator: i.operator ?? '',
      reason: i.reason ?? '',
      attemptCount: i.attemptCount ?? 0,
      size: i.size ?? 0,
      traceId: traceIdOf(i.trace),
    };
    const list = byType.get(i.type);
    if (list) list.push(e);
    else byType.set(i.type, [e]);
  }
  const rows: OutboxRow[] = [];
  for (const [type, events] of byType) {
    const payload = encodeLifecycleEvents(events, settings.format);
    rows.push({ subject: eventSubject(eventTypeName(type)), msgId: `ev-${events[0]!.eventId}`, payload, trace: null, span: '' });
  }
  return rows;
}
