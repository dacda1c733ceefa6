// The metrics the SMTP hooks record (created in app.ts; names and labels in
// the README's Observability section).
import type { Counter, Histogram } from '@opentelemetry/api';

export interface IngressMetrics {
  sessions: Counter;
  decisions: Counter;
  messages: Counter;
  bytes: Counter;
  enqueueSeconds: Histogram;
}
