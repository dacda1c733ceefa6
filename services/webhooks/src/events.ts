// Lifecycle events (proto/tern/v1/lifecycle.proto) as webhook payloads: the
// type names an endpoint filters on, decoding a NATS message of the events
// stream (protobuf, or proto3 JSON with TERN_EVENTS_FORMAT=json), and the
// JSON object sent (the Standard Webhooks shape: type, timestamp, data).
import { LifecycleEvent, LifecycleEvents, LifecycleEventType } from '@tern/proto';

/** The subject token of each type (tern.events.<name>), which is also the filter's vocabulary. */
export const EVENT_TYPES: readonly string[] = Object.entries(LifecycleEventType)
  .filter(([, v]) => typeof v === 'number' && v > LifecycleEventType.LIFECYCLE_EVENT_TYPE_UNSPECIFIED)
  .map(([k]) => k.replace('LIFECYCLE_EVENT_TYPE_', '').toLowerCase());

export function eventTypeName(t: LifecycleEventType): string {
  return LifecycleEventType[t]?.replace('LIFECYCLE_EVENT_TYPE_', '').toLowerCase() ?? 'unspecified';
}

/**
 * A filter as given ("delivered", "message.delivered", "Bounced") in its
 * stored form, or an error naming the bad entry.
 */
export function normalizeEventTypes(given: readonly string[]): string[] {
  const out = new Set<string>();
  for (const raw of given) {
    const t = raw.trim().toLowerCase().replace(/^message\./, '');
    if (!t) continue;
    if (!EVENT_TYPES.includes(t)) throw new Error(`event_types: unknown type "${raw}" (expected ${EVENT_TYPES.join(', ')}; none for all)`);
    out.add(t);
  }
  return [...out].sort();
}

/** Whether a filter (empty: all) takes an event of type `name`. */
export function matches(filter: readonly string[], name: string): boolean {
  return filter.length === 0 || filter.includes(name);
}

/** The events of one NATS message of TERN_EVENTS; throws when it is neither form. */
export function decodeEvents(data: Uint8Array): LifecycleEvent[] {
  // A protobuf LifecycleEvents starts with field 1's tag (0x0a), never "{".
  if (data[0] === 0x7b) return LifecycleEvents.fromJSON(JSON.parse(Buffer.from(data).toString('utf8'))).events;
  return LifecycleEvents.decode(data).events;
}

/** What an endpoint receives for one event: {"type":"message.delivered","timestamp":...,"data":{proto3 JSON of the event}}. */
export function payloadOf(e: LifecycleEvent): { type: string; json: string } {
  const type = `message.${eventTypeName(e.type)}`;
  const json = JSON.stringify({ type, timestamp: (e.at ?? new Date()).toISOString(), data: LifecycleEvent.toJSON(e) });
  return { type, json };
}
