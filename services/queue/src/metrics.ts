// Metric instrument types, from the telemetry library's Meter.
import type { Meter } from '@tern/telemetry';

export type Counter = ReturnType<Meter['createCounter']>;
export type Histogram = ReturnType<Meter['createHistogram']>;
