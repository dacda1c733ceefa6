import assert from 'node:assert/strict';
import { test } from 'node:test';
import { classifyReply, validateBounceRule, type BounceClass, type BounceRule } from '../src/classify';

// Replies as real servers give them (providers' published texts), and Tern's own synthesized ones.
const SAMPLES: Array<[number, string, string, BounceClass]> = [
  [550, '5.1.1', "The email account that you tried to reach does not exist. Please try double-checking the recipient's email address", 'user_unknown'],
  [550, '5.1.1', '<bob@example.com>: Recipient address rejected: User unknown in virtual mailbox table', 'user_unknown'],
  [550, '', 'Requested action not taken: mailbox unavailable', 'user_unknown'],
  [552, '5.2.2', "The email account that you tried to reach is over quota.", 'mailbox_full'],
  [452, '4.2.2', 'Mailbox full', 'mailbox_full'],
  [552, '', 'Requested mail action aborted: exceeded storage allocation', 'mailbox_full'],
  [550, '5.7.1', 'Service unavailable, Client host [198.51.100.7] blocked using Spamhaus. To request removal from this list see https://www.spamhaus.org/query/ip/198.51.100.7', 'reputation'],
  [550, '5.7.606', 'Access denied, banned sending IP [198.51.100.7]. To request removal from this list please visit https://sender.office.com/', 'reputation'],
  [554, '5.7.1', 'Message rejected because of unacceptable content. For more information see http://example.com/policy', 'policy'],
  [550, '5.7.26', 'Unauthenticated email from example.net is not accepted due to domain\'s DMARC policy.', 'policy'],
  [554, '5.7.9', 'Message not accepted for policy reasons.', 'policy'],
  [421, '4.7.0', '[TSS04] Messages from 198.51.100.7 temporarily deferred due to unexpected volume or user complaints', 'rate_limited'],
  [421, '4.7.28', 'Our system has detected an unusual rate of unsolicited mail originating from your IP address.', 'rate_limited'],
  [450, '4.2.1', 'The user you are trying to contact is receiving mail too quickly. Please resend your message at a later time.', 'rate_limited'],
  [550, '5.2.1', 'The email account that you tried to reach is disabled.', 'user_unknown'],
  [552, '5.3.4', 'Your message exceeded Google\'s message size limits.', 'message_too_large'],
  [554, '5.3.4', 'Message too big for system', 'message_too_large'],
  [550, '5.7.10', 'REQUIRETLS: no next hop of example.com offers verified TLS with REQUIRETLS', 'tls_failure'],
  [451, '4.7.5', 'TLS handshake with mx.example.com failed: certificate has expired', 'tls_failure'],
  [550, '5.1.2', 'Host or domain name not found. Name service error for name=nosuch.example type=MX: Host not found', 'dns_failure'],
  [554, '5.4.4', 'nosuch.example: no MX, A or AAAA record (NXDOMAIN)', 'dns_failure'],
  [550, '5.1.10', 'Recipient domain example.org has a null MX (RFC 7505)', 'dns_failure'],
  [451, '4.4.1', 'connection to mx.example.com timed out', 'other'],
  [550, '', 'Command rejected', 'other'],
];

test('built-in rules classify real providers\' and Tern\'s own replies', () => {
  const wrong = SAMPLES.filter(([code, enhanced, text, want]) => classifyReply({ code, enhanced, text }) !== want).map(
    ([code, enhanced, text, want]) => `${code} ${enhanced} ${text.slice(0, 60)}: got ${classifyReply({ code, enhanced, text })}, want ${want}`,
  );
  assert.deepEqual(wrong, []);
});

test('an operator rule is checked first, by code prefix and/or text', () => {
  const rules: BounceRule[] = [
    { codePrefix: '5.7.', pattern: 'TSS\\d\\d', class: 'rate_limited' },
    { codePrefix: '554', pattern: '', class: 'reputation' },
  ];
  assert.equal(classifyReply({ code: 550, enhanced: '5.7.1', text: '[TSS09] blocked' }, rules), 'rate_limited');
  assert.equal(classifyReply({ code: 550, enhanced: '5.7.1', text: 'content rejected' }, rules), 'policy', 'rule 1 needs its text');
  assert.equal(classifyReply({ code: 554, enhanced: '5.7.1', text: 'content rejected' }, rules), 'reputation', 'rule 2 by basic code');
});

test('operator rules are validated, naming the field', () => {
  assert.match(validateBounceRule({ codePrefix: '', pattern: '', class: 'policy' })!, /code_prefix or pattern/);
  assert.match(validateBounceRule({ codePrefix: '6.1.', pattern: '', class: 'policy' })!, /^code_prefix:/);
  assert.match(validateBounceRule({ codePrefix: '', pattern: '(', class: 'policy' })!, /^pattern: not a valid regular expression/);
  assert.match(validateBounceRule({ codePrefix: '5.1.1', pattern: '', class: 'dead' as BounceClass })!, /^class:/);
  assert.equal(validateBounceRule({ codePrefix: '5.7.', pattern: 'spamhaus', class: 'reputation' }), undefined);
  assert.equal(validateBounceRule({ codePrefix: '4.7.28', pattern: '', class: 'rate_limited' }), undefined);
  assert.equal(validateBounceRule({ codePrefix: '550', pattern: '', class: 'policy' }), undefined);
});
