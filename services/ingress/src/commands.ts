// VRFY, EXPN and ETRN, when enabled (all off by default, as hardened
// Postfix setups run): VRFY and EXPN answer from policy's data
// (PolicyService.LookupRecipient, no side effects), ETRN (RFC 1985) asks the
// queue to retry now the deferred recipients of a relay domain (Postfix's
// fast_flush_domains default, $relay_domains).
import { DomainKind, LookupRecipientRequest, QueueAction, RecipientState, type LookupRecipientResponse } from '@tern/proto';
import { reply, type Reply, type SmtpHooks, type SmtpSession } from '@tern/smtp';
import type { Logger } from '@tern/telemetry';
import { call, type PolicyClient, type QueueClient } from './clients';
import type { SessionInfo } from '@tern/proto';
import { errorMessage } from '@tern/runtime';

export interface CommandSettings {
  vrfy: boolean;
  /** EXPN for authenticated users (submission listeners). */
  expn: boolean;
  etrn: boolean;
}

export interface CommandDeps {
  logger: Logger;
  policy: PolicyClient;
  queue: QueueClient;
  deadlineMs: number;
  sessionInfo(s: SmtpSession): SessionInfo;
}

const cannotVerify = reply(252, '2.5.0', 'Cannot VRFY user, but will accept message and attempt delivery');
const lookupFailed = reply(451, '4.3.0', 'Error: temporary policy failure, try again later');

/** The address in a VRFY/EXPN argument: "<a@b>", "a@b" or "Name <a@b>". */
function addressOf(arg: string): string {
  const angle = /<([^<>]*)>\s*$/.exec(arg);
  return (angle ? angle[1]! : arg).trim();
}

function unknown(address: string): Reply {
  return reply(550, '5.1.1', `<${address}>: Recipient address rejected: User unknown in local recipient table`);
}

export function commandHooks(deps: CommandDeps, settings: CommandSettings, submission: boolean): Pick<SmtpHooks, 'onVrfy' | 'onExpn' | 'onEtrn'> {
  const { logger, policy, queue } = deps;
  const lookup = (s: SmtpSession, address: string, expand: boolean): Promise<LookupRecipientResponse> =>
    call(policy.lookupRecipient, policy, LookupRecipientRequest.fromPartial({ session: deps.sessionInfo(s), address, expand }), deps.deadlineMs);
  const out: Pick<SmtpHooks, 'onVrfy' | 'onExpn' | 'onEtrn'> = {};

  if (settings.vrfy) {
    out.onVrfy = async (s, arg) => {
      const address = addressOf(arg);
      if (!address.includes('@')) return cannotVerify;
      let res;
      try {
        res = await lookup(s, address, false);
      } catch (err) {
        logger.warn({ session_id: s.id, err: errorMessage(err) }, 'VRFY lookup failed; answering 451 4.3.0');
        return lookupFailed;
      }
      logger.info({ event: 'smtp_vrfy', session_id: s.id, client: s.clientAddress, address, exists: res.exists }, 'VRFY');
      if (res.domainKind !== DomainKind.DOMAIN_KIND_LOCAL) return cannotVerify;
      return res.exists ? reply(250, '2.1.5', `<${res.address}>`) : unknown(address);
    };
  }

  // EXPN exists only where users authenticate (submission), and only for them.
  if (settings.expn && submission) {
    out.onExpn = async (s, arg) => {
      if (!s.user) return reply(530, '5.7.0', 'Authentication required');
      const address = addressOf(arg);
      if (!address.includes('@')) return reply(501, '5.5.4', 'Syntax: EXPN address');
      let res;
      try {
        res = await lookup(s, address, true);
      } catch (err) {
        logger.warn({ session_id: s.id, err: errorMessage(err) }, 'EXPN lookup failed; answering 451 4.3.0');
        return lookupFailed;
      }
      logger.info({ event: 'smtp_expn', session_id: s.id, user: s.user, address, targets: res.targets.length }, 'EXPN');
      if (res.domainKind !== DomainKind.DOMAIN_KIND_LOCAL) return reply(550, '5.1.1', `<${address}>: not a local mailbox or alias`);
      if (!res.exists) return unknown(address);
      const members = res.targets.length ? res.targets : [res.address];
      return reply(250, '2.1.5', members.map((m) => `<${m}>`));
    };
  }

  if (settings.etrn) {
    out.onEtrn = async (s, node) => {
      // "@domain" and "#queue" as Postfix takes them: the name that follows.
      const domain = node.replace(/^[@#]/, '').toLowerCase().replace(/\.$/, '');
      const unable = reply(458, '4.3.0', 'Unable to queue messages');
      let res;
      try {
        res = await lookup(s, domain, false);
      } catch (err) {
        logger.warn({ session_id: s.id, err: errorMessage(err) }, 'ETRN lookup failed; answering 458 4.3.0');
        return unable;
      }
      if (res.domainKind !== DomainKind.DOMAIN_KIND_RELAY) {
        logger.info({ event: 'smtp_etrn', session_id: s.id, client: s.clientAddress, domain, result: 'not_relay_domain' }, 'ETRN refused');
        return reply(459, '4.7.1', `<${domain}>: service unavailable`);
      }
      try {
        const r = await call(
          queue.applyAction,
          queue,
          {
            action: QueueAction.QUEUE_ACTION_RETRY,
            queueId: '',
            filter: { sender: '', recipient: '', domain, states: [RecipientState.RECIPIENT_STATE_DEFERRED], minAgeSeconds: 0, maxAgeSeconds: 0 },
            all: false,
            dryRun: false,
            operator: `etrn [${s.clientAddress}]`,
            reason: `ETRN ${node}`,
          },
          deps.deadlineMs,
        );
        logger.info({ event: 'smtp_etrn', session_id: s.id, client: s.clientAddress, domain, recipients: r.recipients }, 'ETRN: queuing started');
        return reply(250, '2.0.0', 'Queuing started');
      } catch (err) {
        logger.warn({ session_id: s.id, domain, err: errorMessage(err) }, 'ETRN retry failed; answering 458 4.3.0');
        return unable;
      }
    };
  }
  return out;
}
