// The decisions: one per stage of an SMTP session, read from the in-memory
// policy data. Relay control follows Postfix: local and relay domains are
// open to anyone, everything else only to trusted networks and to
// authenticated users who may relay; routing tricks in the local part are
// relay attempts unless the client may relay.
import { CheckStage, Listener, type CheckRequest, type SessionInfo } from '@tern/proto';
import { addressKey, detectRoutingTrick, formatAddress, parseAddress, type Address } from './address';
import { expand, resolve } from './aliases';
import type { Snapshot } from './cache';
import { inNetworks, type Network } from './networks';
import { accept, refuse, type Decision } from './replies';
import type { UserRow } from './validate';

export interface EngineOptions {
  trustedNetworks: readonly Network[];
  recipientDelimiter: string;
  maxMessageSize: number;
  /** Nested aliases followed before a recipient is refused (TERN_ALIAS_MAX_DEPTH). */
  aliasMaxDepth?: number;
  /** Addresses one recipient may expand to (TERN_ALIAS_MAX_TARGETS). */
  aliasMaxTargets?: number;
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
      if (sender === '' || this.ownsSender(client.user, sender)) return accept('sender_owned');
      return refuse('sender_not_owned', 553, '5.7.1', `${formatAddress(sender)}: Sender address rejected: not owned by user ${client.user.username}`);
    }
    return accept(client.trusted ? 'trusted_network' : 'ok');
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
    const domain = snap.domains.get(addr.domain);
    if (domain) {
      const limit = domain.maxMessageSize || this.opts.maxMessageSize;
      if (req.declaredSize > limit) {
        return refuse('message_too_large', 552, '5.3.4', `${shown}: Message size exceeds fixed limit for ${domain.name}`);
      }
    }
    if (domain?.kind === 'local') return this.localRecipient(addr, shown, snap);
    if (domain?.kind === 'relay') return accept('relay_domain');
    if (client.trusted) return accept('trusted_network');
    if (client.user?.mayRelay) return accept('authenticated_relay');
    return relayDenied('relay_denied');
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
    const x = expand(r.address, r.targets, snap, { maxDepth, maxTargets, recipientDelimiter: this.opts.recipientDelimiter });
    if (!x.ok) {
      switch (x.error) {
        case 'loop':
          return refuse('alias_loop', 550, '5.4.6', `${shown}: Recipient address rejected: alias loop with no final address (${x.chain.join(' -> ')})`);
        case 'too_deep':
          return refuse('alias_too_deep', 451, '4.3.5', `${shown}: Recipient address rejected: aliases nested more than ${maxDepth} deep (${x.chain.join(' -> ')})`);
        case 'too_many':
          return refuse('alias_too_many', 452, '4.5.3', `${shown}: Recipient address rejected: alias expands to more than ${x.limit} addresses`);
      }
    }
    return { ...accept(r.kind === 'alias' ? 'local_alias' : 'catch_all', true), aliasTargets: x.targets };
  }
}
