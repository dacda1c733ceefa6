// One delivery job: find the next hop (route, else MX), stream the body into
// an SMTP or LMTP transaction, and turn the replies into one result per
// recipient.
import {
  AttemptOutcome,
  BodyType,
  DsnNotify,
  DsnRet,
  ReadBodyRequest,
  RouteKind,
  TlsPolicy,
  type DeliveryJob,
  type DeliveryResult,
  type QueueServiceClient,
  type RecipientResult,
  type Route,
  type SmtpReply,
  type TlsInfo,
} from '@tern/proto';
import fs from 'node:fs';
import path from 'node:path';
import { grpc } from '@tern/grpc';
import type { Logger } from '@tern/telemetry';
import type { DaneResolver } from './dane';
import { fromDomain, readHeaderSection, type DkimSigner } from './dkim';
import { mxAllowed, type MtaStsPolicies } from './mta-sts';
import type { NextHop, NextHopResolver, Resolution } from './nexthop';
import type { ConnectionPool } from './pool';
import { convert as convertMime, DowngradeError, scan as scanMime, type DowngradePlan } from './downgrade';
import { SessionError, StaleSessionError, syntheticReply, type ConnectOptions, type SmtpClient, type TlsMode, type TransactionRequest, type TransactionResult } from './smtp-client';
import { errorMessage } from '@tern/runtime';

export interface WorkerDeps {
  logger: Logger;
  resolver: NextHopResolver;
  pool: ConnectionPool;
  queue: QueueServiceClient;
  worker: string;
  heloName: string;
  localAddress?: string;
  smtpPort: number;
  connectTimeoutMs: number;
  commandTimeoutMs: number;
  dataEndTimeoutMs: number;
  queueDeadlineMs: number;
  /** Trust anchors for certificate verification (PEM); default: Node's bundled CAs. */
  tlsCa?: string | Buffer;
  /** DKIM keys by domain; absent or empty = no signing. */
  dkim?: DkimSigner;
  /** MTA-STS policies (RFC 8461); absent = not consulted. */
  mtaSts?: MtaStsPolicies;
  /** DANE (RFC 7672) through a validating resolver; absent = not used. */
  dane?: DaneResolver;
  /** Directory of secrets (one file per name, e.g. a mounted Kubernetes Secret): smart host passwords. */
  secretsDir?: string;
}

/** The queue could not give us the body: not the destination's fault; retry the job later. */
export class BodyUnavailableError extends Error {
  override name = 'BodyUnavailableError';
}

const NOTIFY_WORD: Partial<Record<DsnNotify, string>> = {
  [DsnNotify.DSN_NOTIFY_NEVER]: 'NEVER',
  [DsnNotify.DSN_NOTIFY_SUCCESS]: 'SUCCESS',
  [DsnNotify.DSN_NOTIFY_FAILURE]: 'FAILURE',
  [DsnNotify.DSN_NOTIFY_DELAY]: 'DELAY',
};

/**
 * The NOTIFY keywords to send with a recipient. On a final delivery (LMTP)
 * the "delivered" report is Tern's (the queue sends it, RFC 3461 6.2), so
 * SUCCESS is not passed on: a DSN-capable LMTP server would report it a
 * second time; NOTIFY=SUCCESS alone becomes NEVER.
 */
export function notifyWords(notify: readonly DsnNotify[], finalDelivery: boolean): string[] {
  const words = notify.map((n) => NOTIFY_WORD[n]).filter((w): w is string => !!w);
  if (!finalDelivery || !words.includes('SUCCESS')) return words;
  const rest = words.filter((w) => w !== 'SUCCESS');
  return rest.length ? rest : ['NEVER'];
}

const TLS_MODE: Partial<Record<TlsPolicy, TlsMode>> = {
  [TlsPolicy.TLS_POLICY_UNSPECIFIED]: 'may',
  [TlsPolicy.TLS_POLICY_NONE]: 'none',
  [TlsPolicy.TLS_POLICY_MAY]: 'may',
  [TlsPolicy.TLS_POLICY_ENCRYPT]: 'encrypt',
  [TlsPolicy.TLS_POLICY_VERIFY]: 'verify',
};

function outcomeOf(code: number): AttemptOutcome {
  if (code >= 200 && code < 300) return AttemptOutcome.ATTEMPT_OUTCOME_DELIVERED;
  if (code >= 500) return AttemptOutcome.ATTEMPT_OUTCOME_FAILED;
  return AttemptOutcome.ATTEMPT_OUTCOME_DEFERRED;
}

async function* inlineBody(body: Buffer): AsyncGenerator<Buffer> {
  yield body;
}

async function* prefixed(prefix: Buffer, body: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
  yield prefix;
  yield* body;
}

async function* readBody(deps: WorkerDeps, queueId: string): AsyncGenerator<Buffer> {
  const stream = deps.queue.readBody(ReadBodyRequest.fromPartial({ queueId }), new grpc.Metadata(), {
    deadline: Date.now() + deps.queueDeadlineMs,
  });
  try {
    for await (const part of stream as AsyncIterable<{ chunk: Buffer }>) yield Buffer.from(part.chunk);
  } catch (err) {
    throw new BodyUnavailableError(`reading the body of ${queueId} from the queue failed: ${errorMessage(err)}`);
  } finally {
    stream.cancel();
  }
}

const NON_ASCII = /[\u0080-\u{10ffff}]/u;

/**
 * Does the message need SMTPUTF8 (RFC 6531 3.2): UTF-8 in the sender, a
 * recipient of this job, or the header section? (ORCPT and ENVID travel as
 * xtext, which is ASCII; UTF-8 in the body is a matter of 8BITMIME.)
 */
async function needsSmtputf8(job: DeliveryJob, header: () => Promise<string>): Promise<boolean> {
  if (NON_ASCII.test(job.envelope?.sender ?? '') || job.recipients.some((r) => NON_ASCII.test(r.address))) return true;
  return NON_ASCII.test(await header());
}

/** RFC 8689 3: "TLS-Required: No" (the only value defined), field name and value in any case, folded or not. */
const TLS_REQUIRED_NO = /^TLS-Required:[ \t]*No[ \t]*$/im;

/** Does the header section say TLS-Required: No (the sender prefers delivery to TLS requirements)? */
export function tlsOptional(headerSection: string): boolean {
  return TLS_REQUIRED_NO.test(headerSection.replace(/\r/g, '').replace(/\n[ \t]+/g, ' '));
}

/** An 8-bit message prepared for a next hop without 8BITMIME. */
type Downgraded =
  | { kind: 'asis' } // nothing 8-bit in it after all
  | { kind: 'converted'; plan: DowngradePlan; size: number; signature?: Buffer }
  | { kind: 'impossible'; why: string }
  | { kind: 'failed'; reply: SmtpReply }; // DKIM signing of the converted message failed

/**
 * Scans the message (what to convert), then converts it once to count its
 * size and, with a DKIM key, to sign what will be sent; the transaction
 * converts it again. Three streamed reads, only for this rare case.
 */
async function prepareDowngrade(
  source: () => AsyncIterable<Buffer>,
  sign: (message: AsyncIterable<Buffer>) => Promise<Buffer | SmtpReply | undefined>,
  allow8bitHeaders: boolean,
): Promise<Downgraded> {
  let plan: DowngradePlan;
  try {
    plan = await scanMime(source(), { allow8bitHeaders });
  } catch (err) {
    if (err instanceof DowngradeError) return { kind: 'impossible', why: err.message };
    throw err;
  }
  if (!plan.changed) return { kind: 'asis' };
  let size = 0;
  async function* counted(): AsyncGenerator<Buffer> {
    for await (const chunk of convertMime(source(), plan)) {
      size += chunk.length;
      yield chunk;
    }
  }
  const signed = await sign(counted());
  if (signed === undefined) for await (const _ of counted()) void _;
  else if (!Buffer.isBuffer(signed)) return { kind: 'failed', reply: signed };
  return { kind: 'converted', plan, size: size + (signed?.length ?? 0), signature: signed };
}

/** Where one job goes: hosts in order, how to speak to them, what TLS they must give. */
export interface Plan {
  hops: NextHop[];
  /** LMTP over a unix socket (hops then has one entry, with no addresses). */
  socketPath?: string;
  lmtp: boolean;
  tls: TlsMode;
  /** The message carries REQUIRETLS (RFC 8689). */
  requiretls: boolean;
  /** Smart host credentials. */
  auth?: { user: string; password: string };
}

/**
 * How one attempt connects to one address of a next hop: a job's and a
 * recipient verification's alike (verify.ts), so both reach a destination
 * the same way. `capMs` bounds each timeout (the verification's deadline).
 */
export function connectOptions(deps: WorkerDeps, p: Plan, hop: NextHop, address: string, mode: TlsMode, capMs = Infinity): ConnectOptions {
  return {
    address: p.socketPath ? '' : address,
    port: hop.port,
    socketPath: p.socketPath,
    hostName: hop.name,
    heloName: deps.heloName,
    localAddress: p.socketPath ? undefined : deps.localAddress,
    connectTimeoutMs: Math.min(deps.connectTimeoutMs, capMs),
    commandTimeoutMs: Math.min(deps.commandTimeoutMs, capMs),
    dataEndTimeoutMs: Math.min(deps.dataEndTimeoutMs, capMs),
    tls: mode,
    ca: deps.tlsCa,
    lmtp: p.lmtp,
    auth: p.auth,
    dane: hop.dane,
  };
}

/** "host", "host:port", "[ip]:port", "[ipv6]:port", "unix:/path". */
export function parseTarget(target: string, defaultPort: number): { host: string; port: number } | { socketPath: string } | undefined {
  const t = target.trim();
  if (t.startsWith('unix:')) return t.length > 5 ? { socketPath: t.slice(5) } : undefined;
  if (t.startsWith('/')) return { socketPath: t };
  const m = /^(\[[^\]]+\]|[^:[\]]+)(?::(\d{1,5}))?$/.exec(t);
  if (!m) return undefined;
  const port = m[2] ? Number(m[2]) : defaultPort;
  if (port < 1 || port > 65535) return undefined;
  return { host: m[1]!.replace(/^\[|\]$/g, '').replace(/^ipv6:/i, ''), port };
}

/** Delivers a job. Returns the result to publish, or undefined when the job's lease has lapsed. */
export async function deliver(deps: WorkerDeps, job: DeliveryJob): Promise<DeliveryResult | undefined> {
  const startedAt = new Date();
  if (job.leaseExpiresAt && job.leaseExpiresAt.getTime() < Date.now()) {
    // The queue has taken these recipients back; a late attempt could deliver twice.
    deps.logger.info({ queue_id: job.queueId, job_id: job.jobId }, 'job lease expired before it was taken; dropping it');
    return undefined;
  }
  const base: DeliveryResult = {
    jobId: job.jobId,
    queueId: job.queueId,
    destination: job.destination,
    recipients: [],
    remoteHost: '',
    remoteIp: '',
    tls: undefined,
    startedAt,
    durationMs: 0,
    worker: deps.worker,
    destinationFailure: false,
  };
  const all = (reply: SmtpReply, destinationFailure = false): DeliveryResult => ({
    ...base,
    recipients: job.recipients.map((r) => ({ recipientId: r.recipientId, outcome: outcomeOf(reply.code), reply, remoteDsn: false, finalDelivery: false })),
    destinationFailure,
    durationMs: Date.now() - startedAt.getTime(),
  });

  // The body: from the job when small, else streamed from the queue (again for each pass).
  const inline = job.body.length ? Buffer.from(job.body.buffer, job.body.byteOffset, job.body.byteLength) : undefined;
  const source = (): AsyncIterable<Buffer> => (inline ? inlineBody(inline) : readBody(deps, job.queueId));
  // The header section, read at most once and only when something needs it.
  let headerRead: Promise<string> | undefined;
  const header = (): Promise<string> => (headerRead ??= readHeaderSection(source()));

  const planned = await plan(deps, job, header);
  if ('reply' in planned) return all(planned.reply, planned.temporary);
  const p = planned;

  // DKIM: signed as it leaves (the signature covers exactly what is sent),
  // in a pass of its own so that a big body is streamed, never held.
  const dkim = deps.dkim;
  const keys = dkim?.size ? dkim.keysFor(fromDomain(await header())) : [];
  const sign = async (message: Buffer | AsyncIterable<Buffer>): Promise<Buffer | SmtpReply | undefined> => {
    if (!keys.length || !dkim) return undefined;
    try {
      return Buffer.from(await dkim.sign(keys, message), 'latin1');
    } catch (err) {
      if (err instanceof BodyUnavailableError) throw err;
      // Not the destination's fault and not the message's: retry later rather than send it unsigned.
      deps.logger.error({ queue_id: job.queueId, err: errorMessage(err) }, 'DKIM signing failed');
      return syntheticReply(451, '4.3.0', `DKIM signing failed: ${errorMessage(err)}`);
    }
  };
  const signed = await sign(inline ?? source());
  if (signed && !Buffer.isBuffer(signed)) return all(signed);
  const signature = signed;
  const size = job.size + (signature?.length ?? 0);

  // RFC 6152 3: an 8-bit message goes to a next hop without 8BITMIME only
  // converted to 7 bit (downgrade.ts), signed after conversion. Prepared at
  // most once per job (per whether 8-bit headers may pass: SMTPUTF8).
  const downgrades = new Map<boolean, Promise<Downgraded>>();
  const downgrade = (allow8bitHeaders: boolean): Promise<Downgraded> => {
    let d = downgrades.get(allow8bitHeaders);
    if (!d) downgrades.set(allow8bitHeaders, (d = prepareDowngrade(source, sign, allow8bitHeaders)));
    return d;
  };

  const env = job.envelope;
  const ret = env?.ret === DsnRet.DSN_RET_FULL ? 'FULL' : env?.ret === DsnRet.DSN_RET_HDRS ? 'HDRS' : '';
  const bodyType = env?.bodyType === BodyType.BODY_TYPE_8BITMIME ? '8BITMIME' : env?.bodyType === BodyType.BODY_TYPE_BINARYMIME ? 'BINARYMIME' : '7BIT';
  // Asked at most once, and only of a next hop without SMTPUTF8.
  let utf8Needed: Promise<boolean> | undefined;
  let lastFailure: SessionError | undefined;
  let tlsFailures = 0;
  let failures = 0;

  // Under "may", a next hop whose TLS handshake fails is first passed over
  // for the next one (which may do TLS); if every one failed only at TLS, a
  // second pass goes in clear text (what Postfix does for opportunistic TLS).
  const passes: TlsMode[] = p.tls === 'may' ? ['may', 'none'] : [p.tls];
  for (const mode of passes) {
    if (mode === 'none' && p.tls === 'may' && !(failures > 0 && tlsFailures === failures)) break;
    for (const hop of p.hops) {
      // The clear-text pass is only for hosts whose TLS is opportunistic.
      if (mode === 'none' && (hop.dane || hop.unusable)) continue;
      if (hop.unusable) {
        lastFailure = new SessionError('connect', hop.unusable);
        failures++;
        continue;
      }
      const endpoints = p.socketPath ? [p.socketPath] : hop.addresses;
      endpoints: for (const address of endpoints) {
        const opts = connectOptions(deps, p, hop, address, mode);
        const remoteIp = p.socketPath ? '' : address;
        const remoteHost = p.socketPath ? `unix:${p.socketPath}` : hop.name;
        // The first try may reuse an idle session; a second one (after a stale one) opens a new session.
        let fresh = false;
        session: for (;;) {
          let client: SmtpClient;
          try {
            client = await deps.pool.acquire(opts, fresh);
          } catch (err) {
            if (!(err instanceof SessionError)) throw err;
            // A 5xx greeting, or EHLO and HELO both refused with 5xx: the host
            // refuses to talk to us, which is final for the message (RFC 5321 3.1).
            if ((err.stage === 'greeting' || err.stage === 'ehlo') && err.reply.code >= 500) return { ...all(err.reply), remoteHost, remoteIp };
            // Anything else (connection, 4xx greeting, TLS): the next host.
            lastFailure = err;
            failures++;
            if (err.tlsFailure) tlsFailures++;
            deps.logger.info({ queue_id: job.queueId, host: hop.name, ip: address, err: err.message }, 'next hop unusable; trying the next one');
            continue endpoints;
          }
          const remote = { remoteHost, remoteIp, tls: { ...client.tls } as TlsInfo };
          // RFC 8689 4.2.1: a REQUIRETLS message goes only to a server that offers REQUIRETLS (under verified TLS, ensured above).
          if (p.requiretls && !client.extensions.has('REQUIRETLS')) {
            deps.pool.release(client, opts, true);
            lastFailure = new SessionError('mail', syntheticReply(550, '5.7.10', `REQUIRETLS support required, but not offered by ${hop.name}`), true);
            failures++;
            tlsFailures++;
            continue endpoints;
          }
          // Checks that fail before anything is sent.
          if (bodyType === 'BINARYMIME' && !(client.extensions.has('CHUNKING') && client.extensions.has('BINARYMIME'))) {
            // RFC 3030 3: a binary body cannot be sent with DATA, and Tern does not convert it.
            deps.pool.release(client, opts, true);
            return { ...all(syntheticReply(554, '5.6.3', `${hop.name} does not support BINARYMIME (with CHUNKING), which this message needs; conversion is not supported`)), ...remote };
          }
          // RFC 6531 3.2: a message sent with SMTPUTF8 needs it at the next
          // hop only when its envelope or header section really has UTF-8;
          // otherwise it goes without the parameter (what Postfix does
          // unless strict_smtputf8).
          const smtputf8 = !!env?.smtputf8 && client.extensions.has('SMTPUTF8');
          if (env?.smtputf8 && !smtputf8) {
            let needed: boolean;
            try {
              needed = await (utf8Needed ??= needsSmtputf8(job, header));
            } catch (err) {
              deps.pool.release(client, opts, true);
              throw err; // BodyUnavailableError: the job is tried again later
            }
            if (needed) {
              deps.pool.release(client, opts, true);
              return { ...all(syntheticReply(553, '5.6.7', `${hop.name} does not support SMTPUTF8, which this message needs (UTF-8 in its envelope or header section)`)), ...remote };
            }
          }
          // What goes: the message as it is, or converted to 7 bit for a next hop without 8BITMIME.
          let out: { size: number; signature?: Buffer; body: () => AsyncIterable<Buffer>; bodyType: TransactionRequest['bodyType'] } = { size, signature, body: source, bodyType };
          if (bodyType === '8BITMIME' && !client.extensions.has('8BITMIME')) {
            let d: Downgraded;
            try {
              d = await downgrade(smtputf8);
            } catch (err) {
              deps.pool.release(client, opts, true);
              throw err; // BodyUnavailableError: the job is tried again later
            }
            if (d.kind === 'impossible' || d.kind === 'failed') deps.pool.release(client, opts, true);
            if (d.kind === 'impossible') return { ...all(syntheticReply(554, '5.6.3', `${hop.name} does not support 8BITMIME, and this message cannot be converted to 7 bit: ${d.why}`)), ...remote };
            if (d.kind === 'failed') return { ...all(d.reply), ...remote };
            if (d.kind === 'converted') out = { size: d.size, signature: d.signature, body: () => convertMime(source(), d.plan), bodyType: '7BIT' };
          }
          const sizeLimit = Number(client.extensions.get('SIZE') || 0);
          if (sizeLimit > 0 && out.size > sizeLimit) {
            deps.pool.release(client, opts, true);
            return { ...all(syntheticReply(552, '5.3.4', `message size ${out.size} exceeds the size limit of ${sizeLimit} bytes at ${hop.name}`)), ...remote };
          }
          let tx: TransactionResult;
          try {
            tx = await client.send({
              sender: env?.sender ?? '',
              recipients: job.recipients.map((r) => ({ address: r.address, orcpt: r.orcpt, notify: notifyWords(r.notify, p.lmtp) })),
              size: out.size,
              bodyType: out.bodyType,
              smtputf8,
              requiretls: p.requiretls,
              ret,
              envid: env?.envid ?? '',
              body: out.signature ? prefixed(out.signature, out.body()) : out.body(),
            });
          } catch (err) {
            deps.pool.discard(client, opts);
            // A reused session that failed its RSET took nothing: once more on a new one.
            if (err instanceof StaleSessionError && !fresh) {
              fresh = true;
              continue session;
            }
            if (err instanceof BodyUnavailableError) throw err;
            if (!(err instanceof SessionError)) throw err;
            // The session broke mid-transaction (421, timeout, lost connection): defer, blame the destination.
            return { ...all(err.reply, true), ...remote };
          }
          const remoteDsn = client.extensions.has('DSN');
          // An LMTP route is a final delivery: the queue reports "delivered" itself.
          const finalDelivery = p.lmtp;
          deps.pool.release(client, opts, !tx.broken);
          const recipients: RecipientResult[] = job.recipients.map((r, i) => {
            const rcpt = tx.rcpts[i] ?? tx.mail;
            let reply: SmtpReply;
            if (tx.mail.code < 200 || tx.mail.code >= 300) reply = tx.mail;
            else if (rcpt.code < 200 || rcpt.code >= 300) reply = rcpt;
            else reply = tx.data?.[i] ?? tx.broken?.reply ?? syntheticReply(451, '4.3.0', 'no reply at end of data');
            return { recipientId: r.recipientId, outcome: outcomeOf(reply.code), reply, remoteDsn, finalDelivery };
          });
          return { ...base, ...remote, recipients, destinationFailure: !!tx.broken, durationMs: Date.now() - startedAt.getTime() };
        }
      }
    }
  }
  if (p.requiretls && failures > 0 && tlsFailures === failures) {
    // RFC 8689 5: no next hop met the requirements; the message must not go in clear, so it fails.
    return all(syntheticReply(550, '5.7.10', `REQUIRETLS: no next hop of ${job.destination} offers verified TLS with REQUIRETLS (last: ${lastFailure?.reply.code} ${lastFailure?.reply.enhanced} ${lastFailure?.reply.text})`));
  }
  const reply = lastFailure?.reply ?? syntheticReply(451, '4.4.1', `no next hop of ${job.destination} answered`);
  return all(reply.code >= 500 ? syntheticReply(451, '4.4.1', reply.text) : reply, true);
}

/** Next hops and TLS requirements of a job, or the reply that ends it at once (also a recipient verification's, verify.ts). */
export async function plan(deps: WorkerDeps, job: DeliveryJob, header: () => Promise<string>): Promise<Plan | { reply: SmtpReply; temporary: boolean }> {
  const route: Route | undefined = job.route;
  const requiretls = !!job.envelope?.requiretls;
  // An unknown policy value (a newer admin API) is treated as the default, opportunistic TLS.
  let tls: TlsMode = (route && TLS_MODE[route.tls]) || 'may';
  // REQUIRETLS: verified TLS whatever the route says (RFC 8689 4.2.1).
  if (requiretls) tls = 'verify';
  // RFC 8689 4.2.2: a message marked "TLS-Required: No" is delivered even
  // where a TLS policy (route, MTA-STS, DANE) would stop it: opportunistic
  // TLS instead. The REQUIRETLS parameter wins over the field (RFC 8689 3).
  // The header is read only when a requirement is in play.
  const relaxed = async (): Promise<boolean> => !requiretls && tlsOptional(await header());
  if ((tls === 'encrypt' || tls === 'verify') && (await relaxed())) tls = 'may';
  const fromResolution = (r: Resolution, lmtp: boolean): Plan | { reply: SmtpReply; temporary: boolean } =>
    r.ok ? { hops: r.hops, lmtp, tls, requiretls } : { reply: r.reply, temporary: r.temporary };

  // A smart host or LMTP server is named by the operator's route, not by a
  // DNS MX lookup: its name needs no DNSSEC or MTA-STS to be trusted
  // (REQUIRETLS then verifies the certificate against it).
  if (route && (route.kind === RouteKind.ROUTE_KIND_SMARTHOST || route.kind === RouteKind.ROUTE_KIND_LMTP) && route.target) {
    const lmtp = route.kind === RouteKind.ROUTE_KIND_LMTP;
    const t = parseTarget(route.target, lmtp ? 24 : 25);
    if (!t) return { reply: syntheticReply(451, '4.3.5', `route for ${job.destination} has an unusable target "${route.target}"`), temporary: true };
    if ('socketPath' in t) {
      if (!lmtp) return { reply: syntheticReply(451, '4.3.5', `route for ${job.destination}: a unix socket target needs an LMTP route`), temporary: true };
      // A local socket: TLS has nothing to protect (unless the operator insists).
      return { hops: [{ name: route.target, addresses: [], port: 0 }], socketPath: t.socketPath, lmtp, tls: route.tls === TlsPolicy.TLS_POLICY_UNSPECIFIED && !requiretls ? 'none' : tls, requiretls };
    }
    const planned = fromResolution(await deps.resolver.resolveHost(t.host, t.port), lmtp);
    if (!route.authUser || 'reply' in planned) return planned;
    const password = readSecret(deps, route.authSecret);
    if (password === undefined) {
      return { reply: syntheticReply(451, '4.3.5', `route for ${job.destination}: the secret "${route.authSecret}" with the password of ${route.authUser} is not available`), temporary: true };
    }
    return { ...planned, auth: { user: route.authUser, password } };
  }
  if (route && route.kind !== RouteKind.ROUTE_KIND_MX && route.kind !== RouteKind.ROUTE_KIND_UNSPECIFIED) {
    return { reply: syntheticReply(451, '4.3.5', `route for ${job.destination} is of an unknown kind (${route.kind})`), temporary: true };
  }
  const resolution = await deps.resolver.resolve(job.destination);
  if (!resolution.ok) return fromResolution(resolution, false);
  const literal = job.destination.startsWith('[');
  // MTA-STS and DANE apply to MX delivery whose TLS the operator has not set
  // by route, and to every REQUIRETLS message (which must authenticate its MX).
  if (literal || (!requiretls && route && route.tls !== TlsPolicy.TLS_POLICY_UNSPECIFIED)) return fromResolution(resolution, false);
  let hops = resolution.hops;
  const policy = deps.mtaSts ? await deps.mtaSts.policyFor(job.destination) : undefined;
  const enforced = policy?.mode === 'enforce';
  // RFC 8689 4.2.1: the next hop of a REQUIRETLS message must come from an
  // authenticated MX lookup, DNSSEC-validated (AD from the resolver) or
  // confirmed by an MTA-STS policy in enforce mode; else an attacker who
  // forged the MX could present a valid certificate for his own host.
  if (requiretls && !resolution.secure && !enforced) {
    return {
      reply: syntheticReply(550, '5.7.10', `REQUIRETLS: the MX hosts of ${job.destination} cannot be authenticated (the MX lookup was not DNSSEC-validated and the domain has no MTA-STS policy in enforce mode); the message was not sent`),
      temporary: false,
    };
  }
  if (enforced) {
    // RFC 8461 4.1, 5: only the MX hosts the policy names, only over TLS valid for the MX name; failures wait.
    if (await relaxed()) return { hops, lmtp: false, tls, requiretls };
    hops = hops.filter((h) => mxAllowed(policy, h.name));
    if (!hops.length) {
      const names = resolution.hops.map((h) => h.name).join(', ');
      if (requiretls) return { reply: syntheticReply(550, '5.7.10', `REQUIRETLS: the MTA-STS policy of ${job.destination} names none of its MX hosts (${names})`), temporary: false };
      return { reply: syntheticReply(451, '4.7.5', `MTA-STS policy of ${job.destination} (enforce) names none of its MX hosts (${names})`), temporary: true };
    }
    tls = 'verify';
  }
  if (deps.dane && resolution.secure) {
    // RFC 7672 2.2: under a DNSSEC-validated MX RRset, each host's secure TLSA records decide its TLS.
    const dane = deps.dane;
    const daned = await Promise.all(
      hops.map(async (h) => {
        const a = await dane.tlsa(h.name, h.port);
        if (a.kind === 'records') return { ...h, dane: a.records };
        if (a.kind === 'error') return { ...h, unusable: syntheticReply(451, '4.7.5', `DANE: ${a.why}; ${h.name} is not used`) };
        return h;
      }),
    );
    // TLS-Required: No sets DANE aside (opportunistic TLS on every host).
    if (!(daned.some((h) => h.dane || h.unusable) && (await relaxed()))) hops = daned;
  }
  return { hops, lmtp: false, tls, requiretls };
}

/** A secret by name from the secrets directory (the file's content, without a final newline); undefined when missing. */
function readSecret(deps: WorkerDeps, name: string): string | undefined {
  // The admin API allows "a/b" names (a key inside a secret); never an escape from the directory.
  if (!deps.secretsDir || !/^[A-Za-z0-9][A-Za-z0-9._/-]*$/.test(name) || name.split('/').some((seg) => seg === '..' || seg === '.' || seg === '')) return undefined;
  try {
    return fs.readFileSync(path.join(deps.secretsDir, name), 'utf8').replace(/\r?\n$/, '');
  } catch {
    return undefined;
  }
}
