// The one place where NATS subjects, JetStream streams and durable consumers
// are defined. Every producer and consumer imports these names; nothing else
// spells a subject.

/** Subject of delivery jobs for one destination (recipient domain, ASCII). */
export function jobSubject(destination: string): string {
  // A subject token may not hold '.', '*', '>' or whitespace: encode the domain.
  const token = destination.toLowerCase().replace(/[^a-z0-9-]/g, (c) => (c === '.' ? '_' : `~${c.charCodeAt(0).toString(16)}`));
  return `${SUBJECTS.jobsPrefix}.${token || '_'}`;
}

export const SUBJECTS = {
  jobsPrefix: 'tern.jobs',
  jobsAll: 'tern.jobs.>',
  /** One DeliveryResult per message (delivery before result batches; still read). */
  results: 'tern.results',
  /** DeliveryResults: the results of several jobs in one message (what delivery publishes). */
  resultsBatch: 'tern.results.batch',
  reports: 'tern.reports',
  /** Lifecycle events, tern.events.<type> (received, delivered, ...): see proto/tern/v1/lifecycle.proto. */
  eventsPrefix: 'tern.events',
  eventsAll: 'tern.events.>',
} as const;

/** The subject of lifecycle events of one type ("delivered"). */
export function eventSubject(type: string): string {
  return `${SUBJECTS.eventsPrefix}.${type}`;
}

export interface StreamSpec {
  name: string;
  subjects: string[];
  /** How long JetStream remembers a Nats-Msg-Id to drop a republish. */
  duplicateWindowMs: number;
  /** Bound on stored messages (I4): publishers get an error beyond it. */
  maxMessages: number;
  maxBytes: number;
  /**
   * A log read by any number of consumers (limits retention): the oldest
   * messages go when a bound is reached or they pass `maxAgeMs`. Without it
   * the stream is a work queue that refuses publishes when full.
   */
  log?: { maxAgeMs: number };
}

export const STREAMS = {
  jobs: { name: 'TERN_JOBS', subjects: [SUBJECTS.jobsAll], duplicateWindowMs: 10 * 60_000, maxMessages: 5_000_000, maxBytes: 4 * 1024 ** 3 },
  results: { name: 'TERN_RESULTS', subjects: [SUBJECTS.results, SUBJECTS.resultsBatch], duplicateWindowMs: 10 * 60_000, maxMessages: 5_000_000, maxBytes: 2 * 1024 ** 3 },
  reports: { name: 'TERN_REPORTS', subjects: [SUBJECTS.reports], duplicateWindowMs: 10 * 60_000, maxMessages: 1_000_000, maxBytes: 1024 ** 3 },
  // Mail never waits for a reader of events: when full, the oldest go.
  events: { name: 'TERN_EVENTS', subjects: [SUBJECTS.eventsAll], duplicateWindowMs: 10 * 60_000, maxMessages: 5_000_000, maxBytes: 1024 ** 3, log: { maxAgeMs: 7 * 86_400_000 } },
} as const satisfies Record<string, StreamSpec>;

export interface ConsumerSpec {
  stream: string;
  durable: string;
  /** Redelivery after this long without ack (or `working()` progress). */
  ackWaitMs: number;
  /** Bound on unacknowledged messages across all pods of the consumer. */
  maxAckPending: number;
}

export const CONSUMERS = {
  /** Delivery pods share it; ack wait covers a whole SMTP transaction (they send progress). */
  delivery: { stream: STREAMS.jobs.name, durable: 'delivery', ackWaitMs: 5 * 60_000, maxAckPending: 10_000 },
  /** Queue replicas share it to apply delivery results. */
  queue: { stream: STREAMS.results.name, durable: 'queue', ackWaitMs: 60_000, maxAckPending: 20_000 },
  /** Bounce pods share it to build reports. */
  bounce: { stream: STREAMS.reports.name, durable: 'bounce', ackWaitMs: 2 * 60_000, maxAckPending: 1_000 },
  /**
   * Webhooks pods share it to queue webhook deliveries, every subject of
   * TERN_EVENTS (tern.events.>) from the start of the stream. It is one
   * reader of the log among any: the queue never waits for it.
   */
  webhooks: { stream: STREAMS.events.name, durable: 'webhooks', ackWaitMs: 60_000, maxAckPending: 1_000 },
} as const satisfies Record<string, ConsumerSpec>;

export type ConsumerName = keyof typeof CONSUMERS;
