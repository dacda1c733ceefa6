// The decisions: one per stage of an SMTP session, read from the in-memory
// policy data. Relay control follows Postfix: local and relay domains are
// open to anyone, everything else only to trusted networks and to
// authenticated users who may relay; routing tricks in the local part are
// relay attempts unless the client may relay.
import { CheckStage, Listener, PolicyAction, type CheckRequest, type SessionInfo } from '@tern/proto';
import { addressKey, detectRoutingTrick, formatAddress, parseAddress, type Address } from './address';
import { expand, resolve } from './aliases';
import type { Snapshot } from './cache';
import { inNetworks, type Network } from './networks';
import { accept, refuse, type Decision } from './replies';
import type { RewriteRules } from './rewrites';
import { isSrsLocal, type Srs } from './srs';
import { domainOf, type UserRow } from './validate';

export interface EngineOptions {
  trustedNetworks: readonly Network[];
  recipientDelimiter: string;
  maxMessageSize: number;
  /** Nested aliases followed before a recipient is refused (TERN_ALIAS_MAX_DEPTH). */
  aliasMaxDepth?: number;
  /** Addresses one recipient may expand to (TERN_ALIAS_MAX_TARGETS). */
  aliasMaxTargets?: number;
  /** Canonical maps, masquerading, bcc maps (policy data: rewrites.ts); none when absent. */
  rewrites?: RewriteRules;
  /** Sender Rewriting Scheme for mail forwarded to remote alias targets (TERN_SRS_*); off when absent. */
  srs?: Srs;
}

/** What the engine knows about the client, derived once per request. */
export interface Client {
  address: string;
  trusted: boolean;
  user: UserRow | undefined;
  /** The session claims a login, but the user is gone or disabled. */
  staleAuth: boolean;
  mayRelay: boolean;
  submission: boolean;
}

export const stageName = (s: CheckStage): string =>
  ({
    [CheckStage.CHECK_STAGE_CONNECT]: 'connect',
    [CheckStage.CHECK_STAGE_HELO]: 'helo',
    [CheckStage.CHECK_STAGE_MAIL]: 'mail',
    [CheckStage.CHECK_STAGE_RCPT]: 'rcpt',
    [CheckStage.CHECK_STAGE_DATA]: 'data',
  })[s as number] ?? 'unspecified';

export class Engine {
  constructor(
    private readonly opts: EngineOptions,
    private readonly snapshot: () => Snapshot,
  ) {}

  /** TERN_MAX_MESSAGE_SIZE: checked before any domain's own limit, so a domain's can only be lower. */
  get maxMessageSize(): number {
    return this.opts.maxMessageSize;
  }

  client(session: SessionInfo | undefined): Client {
    const address = session?.clientAddress ?? '';
    const trusted = inNetworks(address, this.opts.trustedNetworks);
    const authName = (session?.authUser ?? '').trim().toLowerCase();
    const found = authName ? this.snapshot().users.get(authName) : undefined;
    const user = found?.enabled ? found : undefined;
    const listener = session?.listener ?? Listener.LISTENER_UNSPECIFIED;
    return {
      address,
      trusted,
      user,
      staleAuth: authName !== '' && !user,
      mayRelay: trusted || (user?.mayRelay ?? false),
      submission: listener === Listener.LISTENER_SUBMISSION || listener === Listener.LISTENER_SUBMISSIONS,
    };
  }

  /** The built-in rules for one stage. */
  decide(req: CheckRequest, client: Client): Decision {
    switch (req.stage) {
      case CheckStage.CHECK_STAGE_CONNECT:
        return accept(client.trusted ? 'trusted_network' : 'ok');
      case CheckStage.CHECK_STAGE_HELO:
        return accept('ok');
      case CheckStage.CHECK_STAGE_MAIL:
        return this.mail(req, client);
      case CheckStage.CHECK_STAGE_RCPT:
        return this.rcpt(req, client);
      case CheckStage.CHECK_STAGE_DATA:
        return accept('ok');
      default:
        return refuse('bad_request', 451, '4.3.5', 'Server configuration problem: unknown policy stage');
    }
  }

  private mail(req: CheckRequest, client: Client): Decision {
    if (client.staleAuth) {
      return refuse('auth_user_unknown', 535, '5.7.8', 'Authentication credentials no longer valid');
    }
    if (client.submission && !client.user && !client.trusted) {
      return refuse('auth_required', 530, '5.7.0', 'Authentication required');
    }
    if (req.declaredSize > this.opts.maxMessageSize) {
      return refuse('message_too_large', 552, '5.3.4', 'Message size exceeds fixed limit');
    }
    const sender = req.sender;
    if (sender !== '' && !parseAddress(sender)) {
      return refuse('bad_sender_syntax', 501, '5.1.7', 'Bad sender address syntax');
    }
    if (client.user) {
      if (sender === '' || this.ownsSender(client.user, sender)) return this.senderRewrites(accept('sender_owned'), sender);
      return refuse('sender_not_owned', 553, '5.7.1', `${formatAddress(sender)}: Sender address rejected: not owned by user ${client.user.username}`);
    }
    return this.senderRewrites(accept(client.trusted ? 'trusted_network' : 'ok'), sender);
  }

  /** The envelope sender as stored: through the sender canonical maps and masquerading (rewrites.ts); "" stays "". */
  storedSender(sender: string): string {
    const addr = sender === '' ? null : parseAddress(sender);
    if (!addr || addr.quoted || detectRoutingTrick(sender)) return sender;
    const key = addressKey(addr);
    const out = this.opts.rewrites?.rewrite(key, 'sender') ?? key;
    return out === key ? sender : out;
  }

  /** A MAIL accept with what the rewrite rules do to this sender: its stored form, its archive copy, header rewriting. */
  private senderRewrites(d: Decision, sender: string): Decision {
    const rules = this.opts.rewrites;
    if (!rules?.count) return d;
    const stored = this.storedSender(sender);
    const bcc = stored ? rules.bcc(stored.toLowerCase(), 'sender') : undefined;
    return {
      ...d,
      senderRewrite: stored !== sender ? stored : undefined,
      bcc: bcc ? [bcc] : undefined,
      rewriteHeaders: rules.headerRules,
    };
  }

  ownsSender(user: UserRow, sender: string): boolean {
    const addr = parseAddress(sender);
    if (!addr || detectRoutingTrick(sender)) return false;
    const key = addressKey(addr);
    return key === user.username || user.allowedSenders.some((p) => (p.startsWith('@') ? p.slice(1) === addr.domain : p === key));
  }

  private rcpt(req: CheckRequest, client: Client): Decision {
    const raw = req.recipient;
    const shown = formatAddress(raw);
    const relayDenied = (reason: string) => refuse(reason, 554, '5.7.1', `${shown}: Relay access denied`);

    // RFC 5321 4.5.1: "postmaster" without a domain is always accepted.
    if (/^<?postmaster>?$/i.test(raw.trim())) return accept('postmaster', true);
    if (client.staleAuth) return refuse('auth_user_unknown', 535, '5.7.8', 'Authentication credentials no longer valid');

    const trick = detectRoutingTrick(raw);
    if (trick && !client.mayRelay) return relayDenied(`routing_trick_${trick}`);
    const addr = parseAddress(raw);
    if (!addr) return refuse('bad_recipient_syntax', 501, '5.1.3', 'Bad recipient address syntax');

    const snap = this.snapshot();
    // A bounce (or reply) to an address we wrote with SRS: back to the original sender.
    const srs = this.opts.srs;
    if (srs && addr.domain === srs.domain && !addr.quoted && isSrsLocal(addr.local)) return this.srsReverse(addr.local, shown, srs);
    const domain = snap.domains.get(addr.domain);
    if (domain) {
      const limit = domain.maxMessageSize || this.opts.maxMessageSize;
      if (req.declaredSize > limit) {
        return refuse('message_too_large', 552, '5.3.4', `${shown}: Message size exceeds fixed limit for ${domain.name}`);
      }
    }
    // Recipient canonical maps: relay control and the size above go by the
    // address given; what is stored is the rewritten one, expanded as an
    // alias target would be (virtual aliasing comes after canonical, as in Postfix).
    const key = addressKey(addr);
    const canonical = addr.quoted ? key : (this.opts.rewrites?.rewrite(key, 'recipient') ?? key);
    let d: Decision;
    if (domain?.kind === 'local') d = canonical !== key ? this.rewritten(key, canonical, shown, snap) : this.localRecipient(addr, shown, snap);
    else if (domain?.kind === 'relay' || client.trusted || client.user?.mayRelay) {
      const reason = domain?.kind === 'relay' ? 'relay_domain' : client.trusted ? 'trusted_network' : 'authenticated_relay';
      d = canonical !== key ? this.rewritten(key, canonical, shown, snap) : accept(reason);
    } else return relayDenied('relay_denied');
    if (d.action !== PolicyAction.POLICY_ACTION_ACCEPT) return d;
    const bcc = this.opts.rewrites?.bcc(canonical, 'recipient');
    if (bcc) d = { ...d, bcc: [bcc] };
    return this.forward(d, req.sender, snap);
  }

  /** A recipient a canonical map rewrote: stored as the rewritten address, expanded like an alias target. */
  private rewritten(key: string, canonical: string, shown: string, snap: Snapshot): Decision {
    const x = expand(key, [canonical], snap, {
      maxDepth: this.opts.aliasMaxDepth ?? 10,
      maxTargets: this.opts.aliasMaxTargets ?? 1000,
      recipientDelimiter: this.opts.recipientDelimiter,
    });
    if (!x.ok) return this.expansionRefused(x, shown);
    const local = x.targets.every((t) => snap.domains.get(domainOf(t))?.kind === 'local');
    return { ...accept('recipient_canonical', local), aliasTargets: x.targets };
  }

  /**
   * SRS for a recipient accepted with alias targets: the targets outside
   * our domains are forwarded with the SRS form of the (stored) sender, so
   * that SPF at their destination checks our domain. The null sender and
   * senders of our own domains are left as they are.
   */
  private forward(d: Decision, sender: string, snap: Snapshot): Decision {
    const srs = this.opts.srs;
    if (!srs || !d.aliasTargets?.length || sender === '') return d;
    const stored = this.storedSender(sender);
    const from = parseAddress(stored);
    if (!from || from.quoted || snap.domains.has(from.domain) || from.domain === srs.domain) return d;
    const remote = d.aliasTargets.filter((t) => {
      const dom = domainOf(t);
      return !snap.domains.has(dom) && dom !== srs.domain;
    });
    if (!remote.length) return d;
    const srsSender = srs.forward(from.local, from.domain);
    return srsSender ? { ...d, srsTargets: remote, srsSender } : d;
  }

  /**
   * RCPT to an SRS address of ours: accepted for the address it stands for
   * when its hash verifies and (SRS0) it is within the maximum age. A
   * forged, damaged or expired one is no address of ours: 550 5.1.1, what
   * Postfix answers behind postsrsd (the reverse lookup finds nothing and
   * the address is then an unknown user of the SRS domain).
   */
  private srsReverse(local: string, shown: string, srs: Srs): Decision {
    const r = srs.reverse(local);
    if (r.ok) return { ...accept('srs_reverse'), aliasTargets: [r.address] };
    const why = { syntax: 'not a valid SRS address', hash: 'SRS address with an invalid hash', expired: 'SRS address expired' }[r.why];
    return refuse(`srs_${r.why}`, 550, '5.1.1', `${shown}: Recipient address rejected: ${why}`);
  }

  /**
   * VRFY, EXPN and ETRN: what the data says of an address, or of a bare
   * domain, with no side effects. A local address exists when an enabled
   * mailbox, an alias or the domain's catch-all takes it (as at RCPT); with
   * `expand`, an alias's (or the catch-all's) targets, one level.
   */
  lookup(raw: string, expand: boolean): { domainKind: 'local' | 'relay' | undefined; exists: boolean; address: string; targets: string[] } {
    const snap = this.snapshot();
    const text = raw.trim().replace(/^<(.*)>$/, '$1');
    if (!text.includes('@')) {
      const name = text.toLowerCase().replace(/\.$/, '');
      return { domainKind: snap.domains.get(name)?.kind, exists: false, address: name, targets: [] };
    }
    const addr = detectRoutingTrick(text) ? null : parseAddress(text);
    if (!addr) return { domainKind: undefined, exists: false, address: '', targets: [] };
    const domain = snap.domains.get(addr.domain);
    const key = addressKey(addr);
    if (domain?.kind !== 'local') return { domainKind: domain?.kind, exists: false, address: key, targets: [] };
    const r = resolve(key, snap, this.opts.recipientDelimiter);
    switch (r.kind) {
      case 'mailbox':
        return { domainKind: 'local', exists: r.enabled, address: r.address, targets: [] };
      case 'alias':
      case 'catch_all':
        return { domainKind: 'local', exists: true, address: r.address, targets: expand ? [...r.targets] : [] };
      default:
        return { domainKind: 'local', exists: key.slice(0, key.lastIndexOf('@')) === 'postmaster', address: key, targets: [] };
    }
  }

  /**
   * A recipient at a local domain: a mailbox is accepted as it is; an alias
   * (or the catch-all that takes it) is accepted with its expansion, the
   * addresses to store instead (aliases.ts); a loop without a final address,
   * aliases nested too deep or an expansion too long are refused here, at RCPT.
   */
  private localRecipient(addr: Address, shown: string, snap: Snapshot): Decision {
    const key = addressKey(addr);
    const r = resolve(key, snap, this.opts.recipientDelimiter);
    if (r.kind === 'mailbox') {
      if (r.enabled) return accept('local_mailbox', true);
      return refuse('mailbox_disabled', 550, '5.2.1', `${shown}: Recipient address rejected: Mailbox disabled`);
    }
    if (r.kind === 'none') {
      if (key.slice(0, key.lastIndexOf('@')) === 'postmaster') return accept('postmaster', true);
      return refuse('unknown_user', 550, '5.1.1', `${shown}: Recipient address rejected: User unknown in local recipient table`);
    }
    const maxDepth = this.opts.aliasMaxDepth ?? 10;
    const maxTargets = this.opts.aliasMaxTargets ?? 1000;
    const x = expand(r.address, r.targets, snap, { maxDepth, maxTargets, recipientDelimiter: this.opts.recipientDelimiter }, r.ext);
    if (!x.ok) return this.expansionRefused(x, shown);
    return { ...accept(r.kind === 'alias' ? 'local_alias' : 'catch_all', true), aliasTargets: x.targets };
  }

  private expansionRefused(x: Exclude<ReturnType<typeof expand>, { ok: true }>, shown: string): Decision {
    switch (x.error) {
      case 'loop':
        return refuse('alias_loop', 550, '5.4.6', `${shown}: Recipient address rejected: alias loop with no final address (${x.chain.join(' -> ')})`);
      case 'too_deep':
        return refuse('alias_too_deep', 451, '4.3.5', `${shown}: Recipient address rejected: aliases nested more than ${this.opts.aliasMaxDepth ?? 10} deep (${x.chain.join(' -> ')})`);
      case 'too_many':
        return refuse('alias_too_many', 452, '4.5.3', `${shown}: Recipient address rejected: alias expands to more than ${x.limit} addresses`);
    }
  }
}
