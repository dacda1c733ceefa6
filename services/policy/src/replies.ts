// Decisions and the SMTP replies they carry (Postfix wording where Postfix has one).
import { PolicyAction, type SmtpReply } from '@tern/proto';

export interface Decision {
  action: PolicyAction;
  /** Undefined for a plain accept: ingress gives its standard success reply. */
  reply?: SmtpReply;
  /** Machine reason for logs and metrics. */
  reason: string;
  localRecipient?: boolean;
  /** RCPT accept of an alias (or a recipient canonical rewrite): the addresses to store instead of the recipient (CheckResponse.alias_targets). */
  aliasTargets?: string[];
  /** MAIL accept: the envelope sender to store instead (sender canonical maps, masquerading). */
  senderRewrite?: string;
  /** MAIL (sender_bcc) and RCPT (recipient_bcc) accept: archive addresses to add as recipients. */
  bcc?: string[];
  /** MAIL accept: some rule rewrites header addresses (ingress asks RewriteAddresses at end of data). */
  rewriteHeaders?: boolean;
  /** RCPT accept: those of aliasTargets forwarded with the SRS sender srsSender. */
  srsTargets?: string[];
  srsSender?: string;
}

export const reply = (code: number, enhanced: string, text: string): SmtpReply => ({ code, enhanced, text });

export const accept = (reason: string, localRecipient = false): Decision => ({
  action: PolicyAction.POLICY_ACTION_ACCEPT,
  reason,
  localRecipient,
});

/** A refusal whose action follows the reply class: 4xx defers, 5xx rejects. */
export function refuse(reason: string, code: number, enhanced: string, text: string): Decision {
  return {
    action: code >= 500 ? PolicyAction.POLICY_ACTION_REJECT : PolicyAction.POLICY_ACTION_DEFER,
    reply: reply(code, enhanced, text),
    reason,
  };
}

export const actionName = (a: PolicyAction): string =>
  ({
    [PolicyAction.POLICY_ACTION_ACCEPT]: 'accept',
    [PolicyAction.POLICY_ACTION_REJECT]: 'reject',
    [PolicyAction.POLICY_ACTION_DEFER]: 'defer',
    [PolicyAction.POLICY_ACTION_HOLD]: 'hold',
  })[a as number] ?? 'unspecified';
