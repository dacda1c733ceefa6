// The metrics the SMTP hooks record (created in app.ts; names and labels in
// the README's Observability section).
import type { Counter, Histogram, Meter } from '@opentelemetry/api';
import type { SmtpServer } from '@tern/smtp';

export interface IngressMetrics {
  sessions: Counter;
  decisions: Counter;
  messages: Counter;
  bytes: Counter;
  enqueueSeconds: Histogram;
}

/** Commands by verb and replies by code class, per listener, read from each SmtpServer's counts at scrape time. */
export function observeSmtpTraffic(meter: Meter, servers: Record<string, SmtpServer | undefined>): void {
  meter.createObservableCounter('tern_ingress_smtp_commands_total', { description: 'SMTP commands received, by listener and verb (unknown verbs as "other")' }).addCallback((r) => {
    for (const [listener, server] of Object.entries(servers)) {
      if (server) for (const [command, n] of server.stats.commands) r.observe(n, { listener, command });
    }
  });
  meter.createObservableCounter('tern_ingress_smtp_replies_total', { description: 'SMTP replies sent, by listener and code class (2xx, 3xx, 4xx, 5xx)' }).addCallback((r) => {
    for (const [listener, server] of Object.entries(servers)) {
      if (!server) continue;
      for (let digit = 2; digit <= 5; digit++) r.observe(server.stats.replies[digit] ?? 0, { listener, class: `${digit}xx` });
    }
  });
}
