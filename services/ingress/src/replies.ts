// The replies ingress gives on its own account, when policy or the queue
// could not answer: always a 4xx, so the client keeps its copy (I1).
import type { Reply } from '@tern/smtp';

export const IngressReplies = {
  policyUnavailable: { code: 451, enhanced: '4.3.0', text: 'Error: temporary policy failure, try again later' },
  queueUnavailable: { code: 451, enhanced: '4.3.0', text: 'Error: queue unavailable, try again later' },
  queueFull: { code: 452, enhanced: '4.3.1', text: 'Insufficient system storage' },
  enqueueFailed: { code: 451, enhanced: '4.3.0', text: 'Error: queue file write error, try again later' },
  authUnavailable: { code: 454, enhanced: '4.7.0', text: 'Temporary authentication failure' },
} satisfies Record<string, Reply>;
