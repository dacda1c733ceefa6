// Lifecycle events on TERN_EVENTS: the one encoding every producer uses
// (the queue, bounce), protobuf or its proto3 JSON (TERN_EVENTS_FORMAT).
import { LifecycleEvents, type LifecycleEvent } from '@tern/proto';

export const EVENT_FORMATS = ['protobuf', 'json'] as const;
export type EventFormat = (typeof EVENT_FORMATS)[number];

/** One NATS message's payload: `events` as a LifecycleEvents. */
export function encodeLifecycleEvents(events: LifecycleEvent[], format: EventFormat): Uint8Array {
  const batch: LifecycleEvents = { events };
  return format === 'json' ? Buffer.from(JSON.stringify(LifecycleEvents.toJSON(batch)), 'utf8') : LifecycleEvents.encode(batch).finish();
}
