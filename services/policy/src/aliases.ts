// Virtual aliases, with Postfix virtual_alias_maps semantics: how an address
// of a local domain resolves (mailbox, alias, catch-all), and the recursive
// expansion of an alias into the addresses a message is stored for.
//
// Resolution of one address, first match wins: for the address itself, then
// for `user@domain` when it is `user+ext@domain` (the recipient delimiter),
// an alias, then a mailbox (enabled or disabled); then the `@domain`
// catch-all alias; then the domain's catch_all address. An alias applies
// before a mailbox of the same address, as in Postfix (virtual aliasing comes
// first): `a -> a, b` keeps mailbox a's mail and copies it to b. A mailbox or
// an exact alias always wins over the catch-all (unlike Postfix, where an
// `@domain` entry also captures mailboxes that are not listed as
// `user@domain user@domain`).
//
// Expansion: each target that resolves to an alias is expanded in turn, up to
// `maxDepth` nested aliases; an alias that names itself among its targets
// keeps its own address (`a -> a, b` delivers to both); a target that leads
// back to an alias on its own path is a loop and is dropped; every other
// target is final (a mailbox, an unknown address of a local domain, or an
// address elsewhere, which is relayed). The result is in order, without
// duplicates, and at most `maxTargets` long.
//
// Address extensions propagate (Postfix propagate_unmatched_extensions, its
// default for virtual): when `user+ext@domain` resolves by `user@domain`'s
// alias or by the catch-all, the extension the lookup did not match is added
// to each target: `user@d -> t@e` sends mail for `user+tag@d` to `t+tag@e`.
import { domainOf } from '@tern/smtp';
import type { Snapshot } from './cache';

export interface AliasOptions {
  /** Nested aliases followed (Postfix virtual_alias_recursion_limit). */
  maxDepth: number;
  /** Addresses one recipient may expand to (Postfix virtual_alias_expansion_limit). */
  maxTargets: number;
  /** Sub-addressing delimiter ("" = off). */
  recipientDelimiter: string;
}

/** What policy data says an address (a lookup key: lower-cased, canonical domain) is. */
export type Resolution =
  | { kind: 'mailbox'; address: string; enabled: boolean }
  | { kind: 'alias'; address: string; targets: readonly string[]; ext: string }
  | { kind: 'catch_all'; address: string; targets: readonly string[]; ext: string }
  | { kind: 'none'; address: string };

export type Expansion =
  /** The addresses to store instead of the recipient. */
  | { ok: true; targets: string[] }
  /** Every path ends in a loop: no final address. `chain` is one such path. */
  | { ok: false; error: 'loop'; chain: string[] }
  /** More than maxDepth nested aliases; `chain` is the path that went too deep. */
  | { ok: false; error: 'too_deep'; chain: string[] }
  /** More than maxTargets addresses. */
  | { ok: false; error: 'too_many'; limit: number };


/** The extension of `user+ext@domain` ("+ext"), or "". */
export function extensionOf(key: string, delimiter: string): string {
  const local = key.slice(0, key.lastIndexOf('@'));
  const d = delimiter ? local.indexOf(delimiter) : -1;
  return d > 0 ? local.slice(d) : '';
}

/** `target` with the extension `ext` added to its local part (nothing when ext is ""). */
export function withExtension(target: string, ext: string): string {
  if (!ext) return target;
  const at = target.lastIndexOf('@');
  return `${target.slice(0, at)}${ext}${target.slice(at)}`;
}

/** The candidates for an address: itself, then `user@domain` for `user+ext@domain` (with the extension it leaves unmatched). */
function candidates(key: string, delimiter: string): Array<[string, string]> {
  const ext = extensionOf(key, delimiter);
  if (!ext) return [[key, '']];
  const at = key.lastIndexOf('@');
  return [
    [key, ''],
    [`${key.slice(0, at - ext.length)}${key.slice(at)}`, ext],
  ];
}

/** How `key` resolves in the policy data (see the top of this file). Only local domains have aliases or catch-alls. */
export function resolve(key: string, snap: Snapshot, delimiter: string): Resolution {
  const domain = snap.domains.get(domainOf(key));
  if (domain?.kind !== 'local') return { kind: 'none', address: key };
  for (const [k, ext] of candidates(key, delimiter)) {
    const alias = snap.aliases.get(k);
    if (alias) return { kind: 'alias', address: k, targets: alias.targets, ext };
    const enabled = snap.mailboxes.get(k);
    if (enabled !== undefined) return { kind: 'mailbox', address: k, enabled };
  }
  const ext = extensionOf(key, delimiter);
  const catchAll = snap.aliases.get(`@${domain.name}`);
  if (catchAll) return { kind: 'catch_all', address: key, targets: catchAll.targets, ext };
  if (domain.catchAll) return { kind: 'catch_all', address: key, targets: [domain.catchAll], ext };
  return { kind: 'none', address: key };
}

class TooDeep {
  constructor(readonly chain: string[]) {}
}
class TooMany {}

/**
 * Expands `start` (an address that resolved to an alias or a catch-all with
 * these `targets`, leaving the extension `ext` unmatched) into the final
 * addresses. Each alias is expanded once (a second path to it adds nothing
 * new), so the work is bounded by the number of aliases, whatever their shape.
 */
export function expand(start: string, targets: readonly string[], snap: Snapshot, opts: AliasOptions, ext = ''): Expansion {
  const out: string[] = [];
  const emitted = new Set<string>();
  const expanded = new Set<string>();
  let loop: string[] | undefined;

  const emit = (address: string) => {
    if (emitted.has(address)) return;
    emitted.add(address);
    out.push(address);
    if (out.length > opts.maxTargets) throw new TooMany();
  };

  /** `address` is a target of the last alias on `path` (path[0] = start). */
  const visit = (address: string, path: string[]): void => {
    const r = resolve(address, snap, opts.recipientDelimiter);
    if (r.kind !== 'alias' && r.kind !== 'catch_all') return emit(address);
    // The alias it resolved to (user+ext goes by user's alias).
    const key = r.address;
    if (path.includes(key)) {
      loop ??= [...path, key];
      return;
    }
    if (expanded.has(key)) return;
    if (path.length + 1 > opts.maxDepth) throw new TooDeep([...path, key]);
    expanded.add(key);
    for (const t of r.targets) {
      if (t === key) emit(withExtension(key, r.ext));
      else visit(withExtension(t, r.ext), [...path, key]);
    }
  };

  try {
    expanded.add(start);
    for (const t of targets) {
      if (t === start) emit(withExtension(start, ext));
      else visit(withExtension(t, ext), [start]);
    }
  } catch (err) {
    if (err instanceof TooDeep) return { ok: false, error: 'too_deep', chain: err.chain };
    if (err instanceof TooMany) return { ok: false, error: 'too_many', limit: opts.maxTargets };
    throw err;
  }
  if (out.length === 0) return { ok: false, error: 'loop', chain: loop ?? [start] };
  return { ok: true, targets: out };
}
