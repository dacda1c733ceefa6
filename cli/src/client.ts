// Connection to the admin API: where (--server / TERN_ADMIN_ADDR), who
// (--token / TERN_ADMIN_TOKEN / TERN_ADMIN_TOKEN_FILE / .tern/admin-token of a
// local `npm start`), and how (TLS, mTLS). Calls carry the bearer token.
import fs from 'node:fs';
import path from 'node:path';
import { channelCredentials, clientInterceptor, grpc, unary } from '@tern/grpc';
import * as proto from '@tern/proto';
import { AdminServiceClient, AdminServiceService, ReadBodyRequest, type ReadBodyResponse } from '@tern/proto';
import { CliError, EXIT, fileProblem } from './errors';
import { UsageError } from './requests';

export const DEFAULT_ADDR = '127.0.0.1:7000';

export interface ConnectionOptions {
  server?: string;
  token?: string;
  tokenFile?: string;
  tls?: boolean;
  caFile?: string;
  certFile?: string;
  keyFile?: string;
  tlsServerName?: string;
  timeout?: string;
}

export interface Connection {
  address: string;
  token?: string;
  /** Where the token came from, for error messages. */
  tokenSource: string;
  tls: boolean;
  deadlineMs: number;
  caFile?: string;
  certFile?: string;
  keyFile?: string;
  tlsServerName?: string;
}

/** The token in a file: its first line that is not blank or a comment; "name:token" and "name:token:role" lines give the token. */
export function tokenFromFile(file: string, label: string): string {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new UsageError(`cannot read the token file ${file} (${label}): ${fileProblem(err)}. Check ${label.startsWith('-') || label.startsWith('TERN_') ? label : 'the file'}, or set TERN_ADMIN_TOKEN.`);
  }
  const line = text
    .split(/\r?\n/)
    .map((l) => l.trim())
    .find((l) => l !== '' && !l.startsWith('#'));
  if (!line) throw new UsageError(`the token file ${file} (${label}) is empty`);
  const named = /^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}:(\S+?)(:(viewer|operator|admin))?$/.exec(line);
  return named ? named[1]! : line;
}

/** `.tern/admin-token` in the working directory or a parent (written by `npm start`). */
export function findLocalTokenFile(start: string): string | undefined {
  let dir = path.resolve(start);
  for (;;) {
    const candidate = path.join(dir, '.tern', 'admin-token');
    if (fs.existsSync(candidate)) return candidate;
    const parent = path.dirname(dir);
    if (parent === dir) return undefined;
    dir = parent;
  }
}

/** gRPC target schemes (grpc-js) that are not host:port; passed through as they are. */
const TARGET_SCHEMES = /^(dns|unix|unix-abstract|ipv4|ipv6|vsock):/i;

/** The admin API address as host:port, or a UsageError naming where it came from and what is expected. */
export function checkAddress(address: string, source: string): string {
  if (TARGET_SCHEMES.test(address)) return address;
  const expected = `expected host:port, e.g. ${DEFAULT_ADDR} or admin.example.com:7000`;
  const m = /^(\[[0-9a-fA-F:.]+\]|[^\s:[\]/]+):([0-9]+)$/.exec(address);
  if (!m) {
    const why = /^[^:\s]+$/.test(address) ? 'has no port' : 'is not host:port';
    throw new UsageError(`${source}: "${address}" ${why}; ${expected}`);
  }
  const port = Number(m[2]);
  if (port < 1 || port > 65535) throw new UsageError(`${source}: port ${m[2]} of "${address}" is out of range (1-65535); ${expected}`);
  return address;
}

/**
 * A token grpc can send: visible ASCII (a bearer token never has spaces or
 * line breaks). Refused here, naming where it came from and never showing it,
 * rather than echoed by grpc-js ("Metadata string value ... contains illegal characters").
 */
function checkToken(token: string, source: string): string {
  const bad = [...token].findIndex((ch) => ch < '!' || ch > '~');
  if (bad >= 0) {
    const what = token[bad] === '\n' || token[bad] === '\r' ? 'a line break' : token[bad] === ' ' || token[bad] === '\t' ? 'a space' : 'a character that is not printable ASCII';
    throw new CliError(`the token from ${source} has ${what} at position ${bad + 1}: a token is one word of printable ASCII. Check ${source} (a token file holds it on its first line).`, EXIT.AUTH);
  }
  return token;
}

const truthy = (v: string | undefined) => v !== undefined && /^(1|true|yes|on)$/i.test(v.trim());

export function resolveConnection(o: ConnectionOptions, env: Record<string, string | undefined>, cwd: string): Connection {
  const given = o.server !== undefined ? { value: o.server, source: '--server' } : { value: env.TERN_ADMIN_ADDR ?? '', source: 'TERN_ADMIN_ADDR' };
  // An empty --server (a script's unset variable) must not quietly mean the local default.
  if (o.server !== undefined && !o.server.trim()) throw new UsageError(`--server: empty; expected host:port, e.g. ${DEFAULT_ADDR} (or leave --server out for TERN_ADMIN_ADDR, default ${DEFAULT_ADDR})`);
  const address = given.value.trim() ? checkAddress(given.value.trim(), given.source) : DEFAULT_ADDR;
  let token: string | undefined;
  let tokenSource = 'none';
  if (o.token) {
    token = o.token;
    tokenSource = '--token';
  } else if (env.TERN_ADMIN_TOKEN) {
    token = env.TERN_ADMIN_TOKEN.trim();
    tokenSource = 'TERN_ADMIN_TOKEN';
  } else if (o.tokenFile) {
    token = tokenFromFile(o.tokenFile, '--token-file');
    tokenSource = '--token-file';
  } else if (env.TERN_ADMIN_TOKEN_FILE) {
    token = tokenFromFile(env.TERN_ADMIN_TOKEN_FILE, 'TERN_ADMIN_TOKEN_FILE');
    tokenSource = 'TERN_ADMIN_TOKEN_FILE';
  } else {
    const local = findLocalTokenFile(cwd);
    if (local) {
      token = tokenFromFile(local, 'written by npm start');
      tokenSource = local;
    }
  }
  if (token !== undefined) token = checkToken(token, tokenSource);
  const caFile = o.caFile ?? env.TERN_ADMIN_CA_FILE;
  const certFile = o.certFile ?? env.TERN_ADMIN_CERT_FILE;
  const keyFile = o.keyFile ?? env.TERN_ADMIN_KEY_FILE;
  if (Boolean(certFile) !== Boolean(keyFile)) throw new UsageError('a client certificate needs both --cert-file and --key-file (TERN_ADMIN_CERT_FILE, TERN_ADMIN_KEY_FILE)');
  const tls = Boolean(o.tls || truthy(env.TERN_ADMIN_TLS) || caFile || certFile);
  if (o.tlsServerName && !tls) throw new UsageError('--tls-server-name names the server certificate, so it needs TLS: add --tls (or --ca-file)');
  const timeout = o.timeout ?? env.TERN_ADMIN_TIMEOUT ?? '15';
  const seconds = Number(timeout);
  if (!Number.isFinite(seconds) || seconds <= 0) throw new UsageError(`--timeout: expected seconds, e.g. 15 (got "${timeout}")`);
  return {
    address,
    token,
    tokenSource,
    tls,
    deadlineMs: Math.round(seconds * 1000),
    caFile,
    certFile,
    keyFile,
    tlsServerName: o.tlsServerName ?? env.TERN_ADMIN_TLS_SERVER_NAME,
  };
}

/** `what` names the file and the option or variable that gave it. */
function readable(file: string, what: string): string {
  if (!fs.existsSync(file)) throw new UsageError(`${what} ${file} does not exist: check the path`);
  return file;
}

type Methods = typeof AdminServiceService;
type DeepPartial<T> = T extends Buffer | string | number | boolean | Date ? T : T extends Array<infer U> ? Array<DeepPartial<U>> : { [K in keyof T]?: DeepPartial<T[K]> };
type UnaryApi = {
  [K in Exclude<keyof Methods, 'readBody'>]: Methods[K] extends {
    requestSerialize: (v: infer Req) => Buffer;
    responseDeserialize: (b: Buffer) => infer Res;
  }
    ? (req: DeepPartial<Req>) => Promise<Res>
    : never;
};

export type AdminApi = UnaryApi & {
  readBody(req: DeepPartial<ReadBodyRequest>, deadlineMs?: number): grpc.ClientReadableStream<ReadBodyResponse>;
  close(): void;
};

const AdminClient = AdminServiceClient;

export function connect(c: Connection): AdminApi {
  let credentials: grpc.ChannelCredentials;
  if (c.caFile) {
    credentials = channelCredentials({ caFile: readable(c.caFile, 'the CA file (--ca-file, TERN_ADMIN_CA_FILE)'), certFile: c.certFile && readable(c.certFile, 'the client certificate (--cert-file, TERN_ADMIN_CERT_FILE)'), keyFile: c.keyFile && readable(c.keyFile, 'the client key (--key-file, TERN_ADMIN_KEY_FILE)') });
  } else if (c.tls) {
    credentials = grpc.credentials.createSsl(
      null,
      c.keyFile ? fs.readFileSync(readable(c.keyFile, 'the client key (--key-file, TERN_ADMIN_KEY_FILE)')) : null,
      c.certFile ? fs.readFileSync(readable(c.certFile, 'the client certificate (--cert-file, TERN_ADMIN_CERT_FILE)')) : null,
    );
  } else {
    credentials = grpc.credentials.createInsecure();
  }
  const options: grpc.ClientOptions = { interceptors: [clientInterceptor(c.deadlineMs)] };
  if (c.tlsServerName) {
    options['grpc.ssl_target_name_override'] = c.tlsServerName;
    options['grpc.default_authority'] = c.tlsServerName;
  }
  const raw = new AdminClient(c.address, credentials, options) as unknown as grpc.Client & Record<string, (...args: unknown[]) => unknown>;
  const metadata = () => {
    const md = new grpc.Metadata();
    if (c.token) md.set('authorization', `Bearer ${c.token}`);
    return md;
  };
  const api: Record<string, unknown> = {
    close: () => raw.close(),
    readBody: (req: DeepPartial<ReadBodyRequest>, deadlineMs?: number) =>
      raw.readBody!(ReadBodyRequest.fromPartial(req), metadata(), deadlineMs ? { deadline: Date.now() + deadlineMs } : {}) as grpc.ClientReadableStream<ReadBodyResponse>,
  };
  for (const name of Object.keys(AdminServiceService)) {
    if (name === 'readBody') continue;
    const fn = raw[name]!.bind(raw);
    // ts-proto encoders want complete messages: fill the defaults in.
    const rpc = AdminServiceService[name as keyof Methods].path.split('/').pop()!;
    const type = (proto as unknown as Record<string, { fromPartial(v: unknown): unknown }>)[`${rpc}Request`]!;
    api[name] = (req: unknown) => unary(fn as never, type.fromPartial(req) as never, { metadata: metadata() });
  }
  return api as AdminApi;
}
