// Process settings of the policy service, read once from the environment.
// Keys are the variable names, so a bad value is reported by its name.
import { commonSchema, csv, parseEnv, positiveInt, postgresUrl, z } from '@tern/config';
import { parseNetworks } from './networks';

const cidrList = (fallback: string) =>
  z
    .string()
    .default(fallback)
    .transform((value, ctx) => {
      try {
        return parseNetworks(value.split(',').map((s) => s.trim()).filter(Boolean));
      } catch (err) {
        ctx.addIssue({ code: 'custom', message: (err as Error).message });
        return z.NEVER;
      }
    });

const schema = z.object({
  ...commonSchema({ grpcPort: 7002, metricsPort: 9102 }),
  TERN_DATABASE_URL: postgresUrl(),
  TERN_DATABASE_POOL_MAX: positiveInt(10),
  /** Clients in these networks may relay (Postfix mynetworks). */
  TERN_TRUSTED_NETWORKS: cidrList('127.0.0.1/32'),
  /** Full reload of the policy data as a safety net next to LISTEN/NOTIFY. */
  TERN_POLICY_RELOAD_MS: positiveInt(30_000),
  /** Sub-addressing: user+tag@domain is checked as user@domain too ("" = off). */
  TERN_RECIPIENT_DELIMITER: z.string().max(1).default('+'),
  /** Largest message accepted, when a domain sets no smaller limit. */
  TERN_MAX_MESSAGE_SIZE: positiveInt(50 * 1024 * 1024),
  /** DNS servers for SPF/DKIM/DMARC/DNSBL lookups ("ip" or "ip:port"); empty = system resolver. */
  TERN_DNS_SERVERS: csv(),
  TERN_DNS_TIMEOUT_MS: positiveInt(3_000),
});

export type Config = z.infer<typeof schema>;

export function loadConfig(env: Record<string, string | undefined> = process.env): Config {
  return parseEnv(schema, env);
}
