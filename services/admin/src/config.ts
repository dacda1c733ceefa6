// Process settings of the admin service, read once from the environment.
// Keys are the variable names, so a bad value is reported by its name.
import { bool, commonSchema, ConfigError, grpcTarget, parseEnv, positiveInt, z } from '@tern/config';
import { parseTokens, readTokensFile, ROLES, type TokenEntry } from './tokens';
import { errorMessage } from '@tern/runtime';

const schema = z.object({
  ...commonSchema({ grpcPort: 7000, metricsPort: 9100 }),
  /** The owners admin forwards to. */
  TERN_QUEUE_ADDR: grpcTarget(),
  TERN_POLICY_ADDR: grpcTarget(),
  /** The webhooks service; unset: the webhook calls fail naming this variable. */
  TERN_WEBHOOKS_ADDR: grpcTarget().optional(),
  /** File of `name:token[:role]` lines (role viewer, operator or admin; default admin); re-read when it changes. */
  TERN_ADMIN_TOKENS_FILE: z
    .string()
    .optional()
    .superRefine((file, ctx) => {
      if (file === undefined) return;
      try {
        readTokensFile(file);
      } catch (err) {
        ctx.addIssue({ code: 'custom', message: errorMessage(err) });
      }
    }),
  /** `name:token[:role],...` (for tests and simple setups; prefer the file). */
  TERN_ADMIN_TOKENS: z
    .string()
    .optional()
    .transform((value, ctx): TokenEntry[] => {
      if (value === undefined) return [];
      try {
        return parseTokens(value, 'comma');
      } catch (err) {
        ctx.addIssue({ code: 'custom', message: errorMessage(err) });
        return z.NEVER;
      }
    }),
  /** How often the tokens file is checked for changes. */
  TERN_ADMIN_TOKENS_RELOAD_MS: positiveInt(2_000),
  /**
   * Under mTLS, accept a verified client certificate (its subject CN is the
   * operator) from a caller that sends no bearer token.
   */
  TERN_ADMIN_CERT_AUTH: bool(false),
  /** Role of an operator known by certificate (viewer, operator or admin). */
  TERN_ADMIN_CERT_ROLE: z.enum(ROLES).default('admin'),
  /** Deadline of a forwarded unary call. */
  TERN_ADMIN_FORWARD_DEADLINE_MS: positiveInt(10_000),
  /** Deadline of a forwarded ReadBody stream (a large message over a slow link). */
  TERN_ADMIN_STREAM_DEADLINE_MS: positiveInt(600_000),
  /** Server TLS for the operator API; with the CA, clients need a certificate it signed (mTLS). */
  TERN_GRPC_TLS_CERT_FILE: z.string().optional(),
  TERN_GRPC_TLS_KEY_FILE: z.string().optional(),
  TERN_GRPC_TLS_CA_FILE: z.string().optional(),
});

export type Config = z.infer<typeof schema>;

export function loadConfig(env: Record<string, string | undefined> = process.env): Config {
  const config = parseEnv(schema, env);
  const problems: Array<{ variable: string; message: string }> = [];
  const fileTokens = config.TERN_ADMIN_TOKENS_FILE ? readTokensFile(config.TERN_ADMIN_TOKENS_FILE).length : 0;
  if (config.TERN_ADMIN_TOKENS_FILE === undefined && config.TERN_ADMIN_TOKENS.length === 0) {
    const message = 'no operator tokens: set TERN_ADMIN_TOKENS_FILE (a file of name:token lines) or TERN_ADMIN_TOKENS (name:token,...)';
    problems.push({ variable: 'TERN_ADMIN_TOKENS_FILE', message });
  } else if (fileTokens === 0 && config.TERN_ADMIN_TOKENS.length === 0) {
    problems.push({ variable: 'TERN_ADMIN_TOKENS_FILE', message: `${config.TERN_ADMIN_TOKENS_FILE} holds no name:token line, and TERN_ADMIN_TOKENS is unset` });
  }
  if (Boolean(config.TERN_GRPC_TLS_CERT_FILE) !== Boolean(config.TERN_GRPC_TLS_KEY_FILE)) {
    const variable = config.TERN_GRPC_TLS_CERT_FILE ? 'TERN_GRPC_TLS_KEY_FILE' : 'TERN_GRPC_TLS_CERT_FILE';
    problems.push({ variable, message: 'TERN_GRPC_TLS_CERT_FILE and TERN_GRPC_TLS_KEY_FILE go together' });
  }
  if (config.TERN_GRPC_TLS_CA_FILE && !config.TERN_GRPC_TLS_CERT_FILE) {
    problems.push({ variable: 'TERN_GRPC_TLS_CA_FILE', message: 'client certificates (mTLS) need server TLS: set TERN_GRPC_TLS_CERT_FILE and TERN_GRPC_TLS_KEY_FILE' });
  }
  if (config.TERN_ADMIN_CERT_AUTH && !config.TERN_GRPC_TLS_CA_FILE) {
    problems.push({ variable: 'TERN_ADMIN_CERT_AUTH', message: 'certificate authentication needs mTLS: set TERN_GRPC_TLS_CA_FILE' });
  }
  if (problems.length > 0) {
    const lines = problems.map((p) => `  ${p.variable}: ${p.message}`).join('\n');
    throw new ConfigError(`invalid configuration:\n${lines}`, problems);
  }
  return config;
}
