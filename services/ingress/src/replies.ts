// The replies ingress gives on its own account, when policy or the queue
// could not answer: always a 4xx, so the client keeps its copy (I1), and
// marked ourFault, so they do not count as the client's errors.
import type { Reply } from '@tern/smtp';

export const IngressReplies = {
  policyUnavailable: { code: 451, enhanced: '4.3.0', text: 'Error: temporary policy failure, try again later', ourFault: true },
  queueUnavailable: { code: 451, enhanced: '4.3.0', text: 'Error: queue unavailable, try again later', ourFault: true },
  queueFull: { code: 452, enhanced: '4.3.1', text: 'Insufficient system storage', ourFault: true },
  enqueueFailed: { code: 451, enhanced: '4.3.0', text: 'Error: queue file write error, try again later', ourFault: true },
  authUnavailable: { code: 454, enhanced: '4.7.0', text: 'Temporary authentication failure', ourFault: true },
} satisfies Record<string, Reply>;
