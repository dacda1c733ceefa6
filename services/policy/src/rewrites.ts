// Address rewriting rules (policy.rewrites), managed through the admin API
// (tern canonical ..., tern bcc ...), with Postfix's semantics:
//
// - canonical maps (sender_canonical_maps, recipient_canonical_maps,
//   canonical_maps for both): a lookup of the address, then of user@domain
//   for user+ext@domain (the extension is then added to the result, as
//   Postfix's propagate_unmatched_extensions does), then of @domain. The
//   result is an address, or for an @domain rule an @domain that keeps the
//   local part. The specific map applies first, canonical to its result.
// - masquerade (masquerade_domains): a sender at a subdomain of a listed
//   domain is shortened to it (user@host.sub.example.com -> user@example.com
//   with example.com listed); the longest listed domain wins. It applies to
//   the envelope sender and, for rules with `headers`, to header addresses
//   (Postfix's default masquerade_classes), never to envelope recipients.
// - masquerade exceptions (masquerade_exceptions): local parts (root,
//   mailer-daemon) that masquerading leaves as they are, wherever it applies,
//   so that root@host.example.com stays telling which host wrote it.
// - bcc maps (sender_bcc_maps, recipient_bcc_maps): the same lookups, after
//   canonical rewriting; the result is one archive address, added as an
//   envelope recipient.
//
// Rules with `headers` also rewrite header addresses: From, Sender and
// Reply-To as senders, To and Cc as recipients (Postfix rewrites Reply-To
// with the sender class too). Each pod keeps the rules in memory, reloaded
// with the policy data (the table NOTIFYs tern_policy_changed).
import { withTransaction, type Pool } from '@tern/db';
import type { grpc } from '@tern/grpc';
import {
  AddressRole,
  RewriteKind,
  type DeleteRewriteRequest,
  type DeleteRewriteResponse,
  type ListRewritesResponse,
  type PutRewriteRequest,
  type PutRewriteResponse,
  type Rewrite,
  type RewriteAddressesRequest,
  type RewriteAddressesResponse,
} from '@tern/proto';
import type { Logger } from '@tern/telemetry';
import { detectRoutingTrick, normalizeMailboxAddress, parseAddress } from './address';
import { invalid } from './errors';
import { domainName } from './validate';

export const KINDS = ['sender_canonical', 'recipient_canonical', 'canonical', 'masquerade', 'masquerade_exception', 'sender_bcc', 'recipient_bcc'] as const;
export type Kind = (typeof KINDS)[number];

const PROTO: Record<Kind, RewriteKind> = {
  sender_canonical: RewriteKind.REWRITE_KIND_SENDER_CANONICAL,
  recipient_canonical: RewriteKind.REWRITE_KIND_RECIPIENT_CANONICAL,
  canonical: RewriteKind.REWRITE_KIND_CANONICAL,
  masquerade: RewriteKind.REWRITE_KIND_MASQUERADE,
  masquerade_exception: RewriteKind.REWRITE_KIND_MASQUERADE_EXCEPTION,
  sender_bcc: RewriteKind.REWRITE_KIND_SENDER_BCC,
  recipient_bcc: RewriteKind.REWRITE_KIND_RECIPIENT_BCC,
};

/** At most this many rules (each pod holds them all in memory). */
const MAX_RULES = 100_000;

interface Row {
  kind: Kind;
  match: string;
  target: string;
  headers: boolean;
  updated_at: Date;
  updated_by: string;
}

export type Role = 'sender' | 'recipient';

function kindOf(k: RewriteKind, field: string): Kind {
  const found = KINDS.find((name) => PROTO[name] === k);
  if (!found) throw invalid(field, `required: one of ${KINDS.join(', ')}`);
  return found;
}

/** An address or @domain, canonical (lower-cased, A-label domain). */
function addressOrDomain(field: string, raw: string): string {
  const s = raw.trim();
  if (!s) throw invalid(field, 'required (an address, or @domain)');
  if (s.startsWith('@')) return '@' + domainName(field, s.slice(1));
  const a = normalizeMailboxAddress(s);
  if (!a) throw invalid(field, `${JSON.stringify(raw)} is neither an address (local@domain) nor @domain`);
  return a;
}

/** RFC 5321 dot-atom local part (what masquerade_exceptions lists: root, mailer-daemon). */
const LOCAL_PART = /^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$/;

/** A masquerade exception: a local part, lower-cased (the lookup keys' local parts are). */
function localPart(field: string, raw: string): string {
  const s = raw.trim();
  if (!s) throw invalid(field, 'required (a local part, e.g. root)');
  if (s.includes('@')) throw invalid(field, `${JSON.stringify(raw)}: give the local part alone (e.g. root): an exception holds at every masqueraded domain`);
  if (s.length > 64 || !LOCAL_PART.test(s)) throw invalid(field, `${JSON.stringify(raw)} is not a local part (letters, digits, ".", "-", "_" and the like; at most 64)`);
  return s.toLowerCase();
}

/** A rule's match in canonical form (used by put and delete alike). */
export function canonicalMatch(kind: Kind, raw: string, field: string): string {
  if (kind === 'masquerade_exception') return localPart(field, raw);
  if (kind === 'masquerade') {
    const s = raw.trim().replace(/^@/, '');
    return domainName(field, s);
  }
  return addressOrDomain(field, raw);
}

export function validateRewrite(r: Rewrite | undefined): Omit<Row, 'updated_at' | 'updated_by'> {
  if (!r) throw invalid('rewrite', 'required');
  const kind = kindOf(r.kind, 'rewrite.kind');
  const match = canonicalMatch(kind, r.match, 'rewrite.match');
  let target = '';
  if (kind === 'masquerade') {
    if (r.target.trim()) throw invalid('rewrite.target', 'a masquerade rule has no target (subdomains of the match are shortened to it)');
  } else if (kind === 'masquerade_exception') {
    if (r.target.trim()) throw invalid('rewrite.target', 'a masquerade exception has no target (the address is left as it is)');
    if (r.headers) throw invalid('rewrite.headers', 'a masquerade exception holds wherever masquerading applies (envelope and headers); it takes no headers flag');
  } else if (kind === 'sender_bcc' || kind === 'recipient_bcc') {
    const a = normalizeMailboxAddress(r.target.trim());
    if (!a) throw invalid('rewrite.target', `${JSON.stringify(r.target)} is not an archive address (local@domain)`);
    target = a;
    if (r.headers) throw invalid('rewrite.headers', 'a bcc rule adds a recipient and changes no header');
  } else {
    target = addressOrDomain('rewrite.target', r.target);
    if (target.startsWith('@') && !match.startsWith('@')) {
      throw invalid('rewrite.target', 'an @domain target keeps the local part, so the match must be an @domain too (or give a whole address)');
    }
    if (target === match) throw invalid('rewrite.target', 'the same as the match: the rule would change nothing');
  }
  return { kind, match, target, headers: r.headers };
}

const toProto = (r: Row): Rewrite => ({ kind: PROTO[r.kind], match: r.match, target: r.target, headers: r.headers, updatedAt: r.updated_at, updatedBy: r.updated_by });

interface Compiled {
  /** kind -> match -> rule */
  maps: Map<Kind, Map<string, Row>>;
  /** Masquerade domains, longest first. */
  masquerade: Row[];
  /** Local parts never masqueraded. */
  masqueradeExceptions: Set<string>;
  headerRules: boolean;
}

const EMPTY: Compiled = { maps: new Map(), masquerade: [], masqueradeExceptions: new Set(), headerRules: false };

export class RewriteRules {
  private compiled: Compiled = EMPTY;

  constructor(
    private readonly pool: Pool,
    /** Sub-addressing delimiter ("" = off): user+ext@domain is looked up as user@domain too. */
    private readonly delimiter: string,
  ) {}

  /** Reads every rule (at start, after a change here, and with every policy data reload). */
  async load(): Promise<void> {
    const rows = (await this.pool.query<Row>('SELECT kind, match, target, headers, updated_at, updated_by FROM policy.rewrites')).rows;
    const maps = new Map<Kind, Map<string, Row>>();
    const masquerade: Row[] = [];
    const masqueradeExceptions = new Set<string>();
    for (const r of rows) {
      if (r.kind === 'masquerade') masquerade.push(r);
      else if (r.kind === 'masquerade_exception') masqueradeExceptions.add(r.match);
      else {
        const m = maps.get(r.kind) ?? new Map<string, Row>();
        m.set(r.match, r);
        maps.set(r.kind, m);
      }
    }
    masquerade.sort((a, b) => b.match.length - a.match.length);
    this.compiled = { maps, masquerade, masqueradeExceptions, headerRules: rows.some((r) => r.headers) };
  }

  /** Some rule rewrites header addresses: ingress then sends them to RewriteAddresses at end of data. */
  get headerRules(): boolean {
    return this.compiled.headerRules;
  }

  get count(): number {
    let n = this.compiled.masquerade.length + this.compiled.masqueradeExceptions.size;
    for (const m of this.compiled.maps.values()) n += m.size;
    return n;
  }

  /**
   * One lookup in a map: the address, user@domain for user+ext@domain (ext
   * then added to the result), @domain. The result, or undefined.
   */
  private lookup(kind: Kind, key: string, headers: boolean): string | undefined {
    const map = this.compiled.maps.get(kind);
    if (!map?.size) return undefined;
    const at = key.lastIndexOf('@');
    if (at < 1) return undefined;
    const local = key.slice(0, at);
    const domain = key.slice(at + 1);
    const usable = (r: Row | undefined) => (r && (!headers || r.headers) ? r : undefined);
    const withExt = (target: string, ext: string) => {
      if (!ext) return target;
      const t = target.lastIndexOf('@');
      return `${target.slice(0, t)}${ext}${target.slice(t)}`;
    };
    const exact = usable(map.get(key));
    if (exact) return exact.target;
    const d = this.delimiter ? local.indexOf(this.delimiter) : -1;
    const ext = d > 0 ? local.slice(d) : '';
    if (ext) {
      const base = usable(map.get(`${local.slice(0, d)}@${domain}`));
      if (base) return withExt(base.target, ext);
    }
    const wild = usable(map.get(`@${domain}`));
    if (!wild) return undefined;
    // @domain -> @other keeps the local part (with its extension).
    if (wild.target.startsWith('@')) return `${local}${wild.target}`;
    return withExt(wild.target, ext);
  }

  private masquerade(address: string, headers: boolean): string {
    const at = address.lastIndexOf('@');
    // Postfix compares the whole local part (root+x is not root).
    if (this.compiled.masqueradeExceptions.has(address.slice(0, at).toLowerCase())) return address;
    const domain = address.slice(at + 1);
    for (const m of this.compiled.masquerade) {
      if ((!headers || m.headers) && domain.length > m.match.length && domain.endsWith(`.${m.match}`)) return `${address.slice(0, at)}@${m.match}`;
    }
    return address;
  }

  /**
   * An address through the canonical maps of its role (the specific map,
   * then canonical) and, for senders and header addresses, masquerading.
   * `headers`: only the rules that ask for header rewriting. The address is
   * a lookup key (lower-cased local part, canonical domain); one that is not
   * a plain address comes back as it is.
   */
  rewrite(address: string, role: Role, headers = false): string {
    if (!address.includes('@')) return address;
    let a = address;
    a = this.lookup(role === 'sender' ? 'sender_canonical' : 'recipient_canonical', a, headers) ?? a;
    a = this.lookup('canonical', a, headers) ?? a;
    if (role === 'sender' || headers) a = this.masquerade(a, headers);
    return a;
  }

  /** The archive address of a sender's or recipient's (already rewritten) mail, if a bcc rule names it. */
  bcc(address: string, role: Role): string | undefined {
    if (!address.includes('@')) return undefined;
    return this.lookup(role === 'sender' ? 'sender_bcc' : 'recipient_bcc', address, false);
  }

  async list(): Promise<ListRewritesResponse> {
    const rows = (await this.pool.query<Row>('SELECT kind, match, target, headers, updated_at, updated_by FROM policy.rewrites ORDER BY kind, match')).rows;
    return { rewrites: rows.map(toProto) };
  }

  async put(req: PutRewriteRequest, operator: string): Promise<PutRewriteResponse> {
    const r = validateRewrite(req.rewrite);
    const row = await withTransaction(this.pool, async (c) => {
      const n = await c.query<{ n: number }>('SELECT count(*)::int AS n FROM policy.rewrites');
      if ((n.rows[0]?.n ?? 0) >= MAX_RULES) throw invalid('rewrite', `at most ${MAX_RULES} rules; remove some first (tern canonical ls, tern bcc ls)`);
      const res = await c.query<Row>(
        `INSERT INTO policy.rewrites (kind, match, target, headers, updated_by) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (kind, match) DO UPDATE SET target = EXCLUDED.target, headers = EXCLUDED.headers, updated_by = EXCLUDED.updated_by, updated_at = now()
         RETURNING kind, match, target, headers, updated_at, updated_by`,
        [r.kind, r.match, r.target, r.headers, operator],
      );
      await c.query("INSERT INTO policy.audit (operator, action, entity, key, detail) VALUES ($1, 'put', 'rewrite', $2, $3)", [
        operator,
        `${r.kind}/${r.match}`,
        JSON.stringify({ target: r.target, headers: r.headers }),
      ]);
      return res.rows[0]!;
    });
    await this.load();
    return { rewrite: toProto(row) };
  }

  async delete(req: DeleteRewriteRequest, operator: string): Promise<DeleteRewriteResponse> {
    const kind = kindOf(req.kind, 'kind');
    const match = canonicalMatch(kind, req.match, 'match');
    const deleted = await withTransaction(this.pool, async (c) => {
      const res = await c.query('DELETE FROM policy.rewrites WHERE kind = $1 AND match = $2', [kind, match]);
      if (res.rowCount) await c.query("INSERT INTO policy.audit (operator, action, entity, key) VALUES ($1, 'delete', 'rewrite', $2)", [operator, `${kind}/${match}`]);
      return (res.rowCount ?? 0) > 0;
    });
    await this.load();
    return { deleted };
  }

  /** Header addresses (RewriteAddresses): each through the rules that ask for headers; one that does not parse comes back as it is. */
  rewriteHeaderAddresses(req: RewriteAddressesRequest): RewriteAddressesResponse {
    if (req.addresses.length > 1000) throw invalid('addresses', 'at most 1000 per call');
    return {
      addresses: req.addresses.map((a) => {
        const parsed = detectRoutingTrick(a.address) ? null : parseAddress(a.address);
        if (!parsed || parsed.quoted) return a.address;
        const key = `${parsed.local.toLowerCase()}@${parsed.domain}`;
        const out = this.rewrite(key, a.role === AddressRole.ADDRESS_ROLE_RECIPIENT ? 'recipient' : 'sender', true);
        return out === key ? a.address : out;
      }),
    };
  }
}

/** The PolicyService handlers of the rewrite rules, over `unary` (service.ts: error mapping). */
export function rewriteHandlers(
  rules: RewriteRules,
  unary: <Req, Res>(name: string, fn: (req: Req) => Promise<Res>) => (call: grpc.ServerUnaryCall<Req, Res>, cb: grpc.sendUnaryData<Res>) => void,
  logger: Logger,
) {
  const op = (operator: string) => operator.trim() || 'unknown';
  const log = (action: string, key: string, operator: string, extra: Record<string, unknown> = {}) =>
    logger.info({ event: 'policy_change', entity: 'rewrite', action, key, operator: op(operator), ...extra }, `rewrite ${action} ${key}`);
  return {
    listRewrites: unary('ListRewrites', () => rules.list()),
    putRewrite: unary('PutRewrite', async (req: PutRewriteRequest) => {
      const res = await rules.put(req, op(req.operator));
      const r = res.rewrite!;
      log('put', `${kindOf(r.kind, 'kind')}/${r.match}`, req.operator, { target: r.target, headers: r.headers });
      return res;
    }),
    deleteRewrite: unary('DeleteRewrite', async (req: DeleteRewriteRequest) => {
      const res = await rules.delete(req, op(req.operator));
      if (res.deleted) log('delete', `${kindOf(req.kind, 'kind')}/${req.match.trim()}`, req.operator);
      return res;
    }),
    rewriteAddresses: unary('RewriteAddresses', async (req: RewriteAddressesRequest) => rules.rewriteHeaderAddresses(req)),
  };
}
