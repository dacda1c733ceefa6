// DKIM signing keys (policy.dkim_keys): generated or imported through the
// admin API, stored with the private key sealed under TERN_DKIM_KEK
// (AES-256-GCM, libs/config), fetched sealed by delivery
// (GetDkimSigningKeys), which opens them with the same KEK. No call returns
// a private key.
//
// Life of a key: `published` (TXT record out, not signing) until activate_at,
// then `active` (delivery signs with it), then `retired` (sealed key erased).
// A domain has at most one active and one published key per algorithm, so a
// domain may sign with an RSA and an Ed25519 key at once. Rotation publishes
// the new selector first and switches after a delay (48 h by default: the
// time for the record to reach resolvers), or when the operator activates it;
// the switch retires the old key. The switch is made by whichever policy pod
// is asked first after activate_at (delivery asks every few seconds), under an
// advisory lock, so replicas never race.
import crypto from 'node:crypto';
import { promisify } from 'node:util';
import { KekError, seal, unseal } from '@tern/config';
import { withTransaction, type Pool, type PoolClient } from '@tern/db';
import { grpc } from '@tern/grpc';
import {
  DkimAlgorithm,
  DkimKeyState,
  type DkimKey,
  type DkimSigningKey,
  type ActivateDkimKeyRequest,
  type ActivateDkimKeyResponse,
  type GenerateDkimKeyRequest,
  type GenerateDkimKeyResponse,
  type GetDkimSigningKeysResponse,
  type ImportDkimKeyRequest,
  type ImportDkimKeyResponse,
  type ListDkimKeysRequest,
  type ListDkimKeysResponse,
  type RetireDkimKeyRequest,
  type RetireDkimKeyResponse,
  type RotateDkimKeyRequest,
  type RotateDkimKeyResponse,
} from '@tern/proto';
import type { Logger } from '@tern/telemetry';
import { DkimKeyNotFoundError, DkimSelectorExistsError, invalid, precondition } from './errors';
import { domainName } from './validate';
import { errorMessage } from '@tern/runtime';

const generateKeyPair = promisify(crypto.generateKeyPair);

type Algorithm = 'rsa' | 'ed25519';
type State = 'published' | 'active' | 'retired';

/** Time for a new selector's TXT record to reach resolvers before it signs (rotation's default). */
export const DEFAULT_ROTATE_AFTER_S = 48 * 3600;
const RSA_BITS = [2048, 3072, 4096];
/** Longest delay accepted before a key signs. */
const MAX_AFTER_S = 90 * 86400;

interface Row {
  domain: string;
  selector: string;
  algorithm: Algorithm;
  bits: number;
  public_key: string;
  sealed_key: Buffer | null;
  state: State;
  created_at: Date;
  created_by: string;
  activate_at: Date;
  retired_at: Date | null;
}

const COLS = 'domain, selector, algorithm, bits, public_key, sealed_key, state, created_at, created_by, activate_at, retired_at';

/** The associated data a key is sealed with: a sealed key moved to another row does not open. */
export const sealLabel = (domain: string, selector: string) => `dkim:${domain}:${selector}`;

const ALGORITHMS: Record<Algorithm, DkimAlgorithm> = { rsa: DkimAlgorithm.DKIM_ALGORITHM_RSA, ed25519: DkimAlgorithm.DKIM_ALGORITHM_ED25519 };
const STATES: Record<State, DkimKeyState> = {
  published: DkimKeyState.DKIM_KEY_STATE_PUBLISHED,
  active: DkimKeyState.DKIM_KEY_STATE_ACTIVE,
  retired: DkimKeyState.DKIM_KEY_STATE_RETIRED,
};

/** The TXT record value: v=DKIM1; k=<rsa|ed25519>; p=<public key>. */
export const dnsValue = (algorithm: Algorithm, publicKey: string) => `v=DKIM1; k=${algorithm}; p=${publicKey}`;

function toKey(r: Row): DkimKey {
  return {
    domain: r.domain,
    selector: r.selector,
    algorithm: ALGORITHMS[r.algorithm],
    bits: r.bits,
    state: STATES[r.state],
    dnsName: `${r.selector}._domainkey.${r.domain}`,
    dnsValue: dnsValue(r.algorithm, r.public_key),
    createdAt: r.created_at,
    createdBy: r.created_by,
    activateAt: r.activate_at,
    retiredAt: r.retired_at ?? undefined,
  };
}

/** A selector: dot-separated DNS labels (RFC 6376 3.1), lower-cased. */
export function selectorName(raw: string): string {
  const s = raw.trim().toLowerCase();
  if (!s) throw invalid('selector', 'required (e.g. s2026)');
  if (s.length > 63 || !/^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*$/.test(s)) {
    throw invalid('selector', `${JSON.stringify(raw)} is not a selector: DNS labels of letters, digits and hyphens, at most 63 characters`);
  }
  return s;
}

function afterSeconds(value: number | undefined, fallback: number): number {
  const v = value ?? fallback;
  if (!Number.isInteger(v) || v < 0 || v > MAX_AFTER_S) throw invalid('after_seconds', `must be between 0 and ${MAX_AFTER_S} (90 days)`);
  return v;
}

function algorithmName(a: DkimAlgorithm, fallback: Algorithm | undefined): Algorithm | undefined {
  if (a === DkimAlgorithm.DKIM_ALGORITHM_RSA) return 'rsa';
  if (a === DkimAlgorithm.DKIM_ALGORITHM_ED25519) return 'ed25519';
  if (a === DkimAlgorithm.DKIM_ALGORITHM_UNSPECIFIED) return fallback;
  throw invalid('algorithm', `unknown algorithm ${a} (rsa or ed25519)`);
}

interface KeyMaterial {
  algorithm: Algorithm;
  bits: number;
  /** p= of the TXT record. */
  publicKey: string;
  /** PKCS#8 PEM. */
  pem: string;
}

function material(privateKey: crypto.KeyObject): KeyMaterial {
  const publicKey = crypto.createPublicKey(privateKey);
  const pem = privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
  if (privateKey.asymmetricKeyType === 'ed25519') {
    // RFC 8463 4.2: p= is the raw 32-byte public key, not a SubjectPublicKeyInfo.
    const x = publicKey.export({ format: 'jwk' }).x!;
    return { algorithm: 'ed25519', bits: 0, publicKey: Buffer.from(x, 'base64url').toString('base64'), pem };
  }
  const bits = privateKey.asymmetricKeyDetails?.modulusLength ?? 0;
  return { algorithm: 'rsa', bits, publicKey: publicKey.export({ type: 'spki', format: 'der' }).toString('base64'), pem };
}

async function generate(algorithm: Algorithm, bits: number): Promise<KeyMaterial> {
  const pair = algorithm === 'ed25519' ? await generateKeyPair('ed25519') : await generateKeyPair('rsa', { modulusLength: bits });
  return material(pair.privateKey);
}

/** An operator's PEM as key material; every problem named under `field`. */
export function importKey(field: string, pem: string): KeyMaterial {
  if (!pem.trim()) throw invalid(field, 'required: the private key in PEM (PKCS#8 or PKCS#1)');
  let key: crypto.KeyObject;
  try {
    key = crypto.createPrivateKey(pem);
  } catch (err) {
    throw invalid(field, `not a private key in PEM (PKCS#8 or PKCS#1, unencrypted): ${errorMessage(err)}`);
  }
  const type = key.asymmetricKeyType;
  if (type !== 'rsa' && type !== 'ed25519') throw invalid(field, `a ${type} key cannot sign DKIM: use RSA or Ed25519`);
  const m = material(key);
  // RFC 8301 3.2: verifiers refuse shorter RSA keys.
  if (m.algorithm === 'rsa' && m.bits < 1024) throw invalid(field, `an RSA key of ${m.bits} bits is too short for DKIM (at least 1024; 2048 recommended)`);
  return m;
}

/** What policy refuses to start with: keys stored but no KEK, or a KEK that does not open them. */
export class KekMismatchError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'KekMismatchError';
  }
}

export class DkimKeyStore {
  constructor(
    private readonly pool: Pool,
    private readonly kek: Buffer | undefined,
  ) {}

  /**
   * At start: every stored key must open with TERN_DKIM_KEK, or the process
   * must not run (a key stored under another KEK would never sign again).
   */
  async checkKek(): Promise<number> {
    let rows: Pick<Row, 'domain' | 'selector' | 'sealed_key'>[];
    try {
      rows = (await this.pool.query<Row>('SELECT domain, selector, sealed_key FROM policy.dkim_keys WHERE sealed_key IS NOT NULL')).rows;
    } catch (err) {
      // Migrations not applied yet: no keys to check; the calls will fail until they are.
      if ((err as { code?: string }).code === '42P01') return 0;
      throw err;
    }
    if (!rows.length) return 0;
    if (!this.kek) {
      throw new KekMismatchError(
        `TERN_DKIM_KEK: not set, but ${rows.length === 1 ? '1 DKIM key is' : `${rows.length} DKIM keys are`} stored sealed with a key-encryption key; set it to that key (base64 of 32 bytes, from the Secret it was made for, the same as delivery's)`,
      );
    }
    for (const r of rows) {
      try {
        unseal(this.kek, r.sealed_key!, sealLabel(r.domain, r.selector));
      } catch (err) {
        if (!(err instanceof KekError)) throw err;
        throw new KekMismatchError(
          `TERN_DKIM_KEK: does not open the stored DKIM key of ${r.domain} (selector ${r.selector}): it is not the key-encryption key the keys were stored with; set that one`,
        );
      }
    }
    return rows.length;
  }

  private requireKek(): Buffer {
    if (!this.kek) {
      throw precondition(
        'policy has no TERN_DKIM_KEK, so it cannot store a private key: set TERN_DKIM_KEK (base64 of 32 random bytes, `openssl rand -base64 32`, from a Secret) on policy and delivery, then try again',
      );
    }
    return this.kek;
  }

  /** Makes due published keys active and retires the keys they replace; only writes when one is due. */
  async activateDue(): Promise<void> {
    const due = await this.pool.query("SELECT 1 FROM policy.dkim_keys WHERE state = 'published' AND activate_at <= now() LIMIT 1");
    if (!due.rowCount) return;
    await withTransaction(this.pool, (c) => this.switchDue(c));
  }

  private async switchDue(c: PoolClient): Promise<void> {
    // One switch at a time across policy pods; the unique index allows one active key per domain and algorithm.
    await c.query("SELECT pg_advisory_xact_lock(hashtext('tern_dkim_activate'))");
    const retired = await c.query<{ domain: string; selector: string }>(
      `UPDATE policy.dkim_keys k SET state = 'retired', retired_at = now(), sealed_key = NULL
        WHERE k.state = 'active' AND EXISTS (
          SELECT 1 FROM policy.dkim_keys n WHERE n.domain = k.domain AND n.algorithm = k.algorithm AND n.state = 'published' AND n.activate_at <= now())
        RETURNING domain, selector`,
    );
    const activated = await c.query<{ domain: string; selector: string }>(
      "UPDATE policy.dkim_keys SET state = 'active', activate_at = now() WHERE state = 'published' AND activate_at <= now() RETURNING domain, selector",
    );
    for (const r of retired.rows) await this.audit(c, 'system', 'retire', r.domain, r.selector, { replaced: true });
    for (const r of activated.rows) await this.audit(c, 'system', 'activate', r.domain, r.selector, {});
  }

  private async audit(c: Pick<PoolClient, 'query'>, operator: string, action: string, domain: string, selector: string, detail: object): Promise<void> {
    await c.query("INSERT INTO policy.audit (operator, action, entity, key, detail) VALUES ($1, $2, 'dkim_key', $3, $4)", [
      operator,
      action,
      `${domain}/${selector}`,
      JSON.stringify(detail),
    ]);
  }

  private async get(c: Pick<PoolClient, 'query'>, domain: string, selector: string, lock = false): Promise<Row | undefined> {
    return (await c.query<Row>(`SELECT ${COLS} FROM policy.dkim_keys WHERE domain = $1 AND selector = $2${lock ? ' FOR UPDATE' : ''}`, [domain, selector])).rows[0];
  }

  /** The domain's keys locked (lock order: the domain first), and this key's row locked; an unknown key is NOT_FOUND. */
  private async lockedKey(c: PoolClient, domain: string, selector: string): Promise<Row> {
    await this.lock(c, domain);
    const row = await this.get(c, domain, selector, true);
    if (!row) throw new DkimKeyNotFoundError(domain, selector);
    return row;
  }

  private async insert(c: PoolClient, domain: string, selector: string, m: KeyMaterial, state: 'active' | 'published', after: number, operator: string): Promise<Row> {
    const kek = this.requireKek();
    const existing = await this.get(c, domain, selector);
    if (existing) {
      throw new DkimSelectorExistsError(domain, selector, existing.state);
    }
    const sealed = seal(kek, Buffer.from(m.pem), sealLabel(domain, selector));
    const res = await c.query<Row>(
      `INSERT INTO policy.dkim_keys (domain, selector, algorithm, bits, public_key, sealed_key, state, created_by, activate_at)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now() + make_interval(secs => $9::int))
       RETURNING ${COLS}`,
      [domain, selector, m.algorithm, m.bits, m.publicKey, sealed, state, operator, after],
    );
    const row = res.rows[0]!;
    await this.audit(c, operator, 'put', domain, selector, { algorithm: m.algorithm, bits: m.bits, state: row.state, activateAt: row.activate_at });
    return row;
  }

  /** The domain's keys of one algorithm that are not retired, locked. */
  private async current(c: PoolClient, domain: string, algorithm: Algorithm): Promise<{ active?: Row; waiting?: Row }> {
    const rows = (
      await c.query<Row>(`SELECT ${COLS} FROM policy.dkim_keys WHERE domain = $1 AND algorithm = $2 AND state <> 'retired' FOR UPDATE`, [domain, algorithm])
    ).rows;
    return { active: rows.find((r) => r.state === 'active'), waiting: rows.find((r) => r.state === 'published') };
  }

  private lock(c: PoolClient, domain: string): Promise<unknown> {
    // Serializes changes to one domain's keys (generate, rotate, retire racing each other).
    return c.query("SELECT pg_advisory_xact_lock(hashtext('tern_dkim_domain'), hashtext($1))", [domain]);
  }

  /** A first key of its algorithm for the domain (generated or imported). */
  async add(domainRaw: string, selectorRaw: string, make: () => Promise<KeyMaterial>, afterRaw: number, operator: string): Promise<DkimKey> {
    const domain = domainName('domain', domainRaw);
    const selector = selectorName(selectorRaw);
    const after = afterSeconds(afterRaw, 0);
    this.requireKek();
    const m = await make();
    return withTransaction(this.pool, async (c) => {
      await this.lock(c, domain);
      await this.switchDue(c);
      const { active, waiting } = await this.current(c, domain, m.algorithm);
      if (active) {
        throw precondition(
          `${domain} already signs with the ${m.algorithm} key of selector ${active.selector}; to replace it, rotate: tern dkim rotate ${domain} ${selector} (publishes the new key first and switches after --after)`,
        );
      }
      if (waiting) {
        throw precondition(
          `the ${m.algorithm} key of selector ${waiting.selector} waits to sign ${domain} from ${waiting.activate_at.toISOString()}; activate it (tern dkim activate ${domain} ${waiting.selector}) or retire it first`,
        );
      }
      return toKey(await this.insert(c, domain, selector, m, after === 0 ? 'active' : 'published', after, operator));
    });
  }

  async generateKey(req: GenerateDkimKeyRequest): Promise<GenerateDkimKeyResponse> {
    const algorithm = algorithmName(req.algorithm, 'rsa')!;
    const bits = algorithm === 'rsa' ? req.bits || 2048 : 0;
    if (algorithm === 'rsa' && !RSA_BITS.includes(bits)) throw invalid('bits', `${bits}: RSA keys are generated with ${RSA_BITS.join(', ')} bits`);
    if (algorithm === 'ed25519' && req.bits) throw invalid('bits', 'Ed25519 keys have no size to choose');
    return { key: await this.add(req.domain, req.selector, () => generate(algorithm, bits), req.afterSeconds, req.operator) };
  }

  async importKey(req: ImportDkimKeyRequest): Promise<ImportDkimKeyResponse> {
    const m = importKey('private_key_pem', req.privateKeyPem);
    return { key: await this.add(req.domain, req.selector, async () => m, req.afterSeconds, req.operator) };
  }

  async rotate(req: RotateDkimKeyRequest): Promise<RotateDkimKeyResponse> {
    const domain = domainName('domain', req.domain);
    const selector = selectorName(req.selector);
    const after = afterSeconds(req.afterSeconds, DEFAULT_ROTATE_AFTER_S);
    this.requireKek();
    const imported = req.privateKeyPem ? importKey('private_key_pem', req.privateKeyPem) : undefined;
    // Which key is replaced: the one of the requested (or imported) algorithm, or the domain's only active key.
    const actives = (await this.pool.query<Row>(`SELECT ${COLS} FROM policy.dkim_keys WHERE domain = $1 AND state = 'active'`, [domain])).rows;
    let algorithm = algorithmName(req.algorithm, imported?.algorithm);
    if (imported && algorithm !== imported.algorithm) throw invalid('algorithm', `the imported key is ${imported.algorithm}, not ${algorithm}`);
    if (!algorithm) {
      if (actives.length > 1) throw invalid('algorithm', `${domain} signs with ${actives.map((a) => `${a.algorithm} (${a.selector})`).join(' and ')}: say which to rotate`);
      algorithm = actives[0]?.algorithm;
    }
    const old = actives.find((a) => a.algorithm === algorithm);
    if (!algorithm || !old) {
      throw precondition(`${domain} has no active ${algorithm ?? ''} key to rotate`.replace('  ', ' ') + `; add one: tern dkim generate ${domain} ${selector}`);
    }
    const bits = algorithm === 'rsa' ? req.bits || old.bits || 2048 : 0;
    if (!imported && algorithm === 'rsa' && !RSA_BITS.includes(bits)) throw invalid('bits', `${bits}: RSA keys are generated with ${RSA_BITS.join(', ')} bits`);
    const m = imported ?? (await generate(algorithm, bits));
    return withTransaction(this.pool, async (c) => {
      await this.lock(c, domain);
      await this.switchDue(c);
      const { active, waiting } = await this.current(c, domain, algorithm);
      if (!active) throw precondition(`${domain} has no active ${algorithm} key to rotate (it changed meanwhile); see tern dkim ls ${domain}`);
      if (waiting) {
        throw precondition(
          `selector ${waiting.selector} already waits to replace ${active.selector} (from ${waiting.activate_at.toISOString()}); activate it (tern dkim activate ${domain} ${waiting.selector}) or retire it first`,
        );
      }
      // Always published first; with after 0 the switch (retiring the current key) happens now, through the same path as a timed one.
      let row = await this.insert(c, domain, selector, m, 'published', after, req.operator);
      if (after === 0) {
        await this.switchDue(c);
        row = (await this.get(c, domain, selector))!;
        return { key: toKey(row), current: toKey((await this.get(c, domain, active.selector))!) };
      }
      return { key: toKey(row), current: toKey(active) };
    });
  }

  async activate(req: ActivateDkimKeyRequest): Promise<ActivateDkimKeyResponse> {
    const domain = domainName('domain', req.domain);
    const selector = selectorName(req.selector);
    return withTransaction(this.pool, async (c) => {
      const row = await this.lockedKey(c, domain, selector);
      if (row.state === 'retired') throw precondition(`the key ${selector} of ${domain} is retired (its private key is erased); generate a new one`);
      if (row.state === 'active') return { key: toKey(row), retired: undefined };
      const before = (await this.current(c, domain, row.algorithm)).active;
      await c.query("UPDATE policy.dkim_keys SET activate_at = now() WHERE domain = $1 AND selector = $2", [domain, selector]);
      await this.audit(c, req.operator, 'activate', domain, selector, { early: true });
      await this.switchDue(c);
      const now = (await this.get(c, domain, selector))!;
      const old = before ? await this.get(c, domain, before.selector) : undefined;
      return { key: toKey(now), retired: old ? toKey(old) : undefined };
    });
  }

  async retire(req: RetireDkimKeyRequest): Promise<RetireDkimKeyResponse> {
    const domain = domainName('domain', req.domain);
    const selector = selectorName(req.selector);
    return withTransaction(this.pool, async (c) => {
      const row = await this.lockedKey(c, domain, selector);
      if (row.state === 'retired') return { key: toKey(row) };
      const res = await c.query<Row>(
        `UPDATE policy.dkim_keys SET state = 'retired', retired_at = now(), sealed_key = NULL WHERE domain = $1 AND selector = $2 RETURNING ${COLS}`,
        [domain, selector],
      );
      await this.audit(c, req.operator, 'retire', domain, selector, { was: row.state });
      return { key: toKey(res.rows[0]!) };
    });
  }

  async list(req: ListDkimKeysRequest): Promise<ListDkimKeysResponse> {
    const domain = req.domain ? domainName('domain', req.domain) : '';
    await this.activateDue();
    const res = await this.pool.query<Row>(
      `SELECT ${COLS} FROM policy.dkim_keys WHERE ($1 = '' OR domain = $1) AND ($2 OR state <> 'retired')
        ORDER BY domain, algorithm, CASE state WHEN 'active' THEN 0 WHEN 'published' THEN 1 ELSE 2 END, created_at DESC`,
      [domain, req.includeRetired],
    );
    return { keys: res.rows.map(toKey) };
  }

  /** For delivery: the active keys, sealed (it opens them with the same KEK). */
  async signingKeys(): Promise<GetDkimSigningKeysResponse> {
    await this.activateDue();
    const res = await this.pool.query<Row>(`SELECT ${COLS} FROM policy.dkim_keys WHERE state = 'active' ORDER BY domain, algorithm`);
    return {
      keys: res.rows.map(
        (r): DkimSigningKey => ({ domain: r.domain, selector: r.selector, algorithm: ALGORITHMS[r.algorithm], sealedPrivateKey: r.sealed_key! }),
      ),
    };
  }
}

/** The PolicyService handlers of the DKIM calls, over `unary` (service.ts: error mapping) and a change log line. */
export function dkimKeyHandlers(
  keys: DkimKeyStore,
  unary: <Req, Res>(name: string, fn: (req: Req) => Promise<Res>) => (call: grpc.ServerUnaryCall<Req, Res>, cb: grpc.sendUnaryData<Res>) => void,
  logger: Logger,
) {
  const op = (operator: string) => operator.trim() || 'unknown';
  const log = (action: string, key: DkimKey | undefined, operator: string, extra: Record<string, unknown> = {}) =>
    key &&
    logger.info(
      { event: 'policy_change', entity: 'dkim_key', action, key: `${key.domain}/${key.selector}`, state: DkimKeyState[key.state], operator: op(operator), ...extra },
      `dkim_key ${action} ${key.domain}/${key.selector}`,
    );
  return {
    generateDkimKey: unary('GenerateDkimKey', async (req: GenerateDkimKeyRequest) => {
      const res = await keys.generateKey({ ...req, operator: op(req.operator) });
      log('generate', res.key, req.operator);
      return res;
    }),
    importDkimKey: unary('ImportDkimKey', async (req: ImportDkimKeyRequest) => {
      const res = await keys.importKey({ ...req, operator: op(req.operator) });
      log('import', res.key, req.operator);
      return res;
    }),
    listDkimKeys: unary('ListDkimKeys', (req: ListDkimKeysRequest) => keys.list(req)),
    rotateDkimKey: unary('RotateDkimKey', async (req: RotateDkimKeyRequest) => {
      const res = await keys.rotate({ ...req, operator: op(req.operator) });
      log('rotate', res.key, req.operator, { replaces: res.current?.selector, activateAt: res.key?.activateAt });
      return res;
    }),
    activateDkimKey: unary('ActivateDkimKey', async (req: ActivateDkimKeyRequest) => {
      const res = await keys.activate({ ...req, operator: op(req.operator) });
      log('activate', res.key, req.operator, { retired: res.retired?.selector });
      return res;
    }),
    retireDkimKey: unary('RetireDkimKey', async (req: RetireDkimKeyRequest) => {
      const res = await keys.retire({ ...req, operator: op(req.operator) });
      log('retire', res.key, req.operator);
      return res;
    }),
    getDkimSigningKeys: unary('GetDkimSigningKeys', () => keys.signingKeys()),
  };
}
