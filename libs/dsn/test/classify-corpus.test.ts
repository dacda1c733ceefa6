// Bounce classification against replies as the large mailbox providers and
// common MTAs give them, written from their published error references
// (Gmail's "SMTP error reference", Microsoft's Exchange Online NDR pages,
// Yahoo's "SMTP error codes", Apple's and Comcast's postmaster pages, and
// the default texts of Postfix, Exim and the filtering gateways). Each row's
// class is the one a person reading the reply would give it. The test
// prints the share classified right and requires 95%; the rows it gets wrong
// are listed so that a rule can be added (or the row argued).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { classifyReply, type BounceClass } from '../src/classify';

type Row = [code: number, enhanced: string, text: string, want: BounceClass, source: string];

export const CORPUS: Row[] = [
  // Gmail
  [550, '5.1.1', "The email account that you tried to reach does not exist. Please try double-checking the recipient's email address for typos or unnecessary spaces.", 'user_unknown', 'gmail'],
  [550, '5.2.1', 'The email account that you tried to reach is disabled.', 'user_unknown', 'gmail'],
  [452, '4.2.2', 'The email account that you tried to reach is over quota. Please direct the recipient to https://support.google.com/mail/?p=OverQuotaTemp', 'mailbox_full', 'gmail'],
  [552, '5.2.2', 'The email account that you tried to reach is over quota and inactive.', 'mailbox_full', 'gmail'],
  [450, '4.2.1', 'The user you are trying to contact is receiving mail too quickly. Please resend your message at a later time.', 'rate_limited', 'gmail'],
  [550, '5.4.5', 'Daily user sending limit exceeded.', 'rate_limited', 'gmail'],
  [421, '4.7.28', 'Gmail has detected an unusual rate of unsolicited mail originating from your DKIM domain. To protect our users from spam, mail sent from your domain has been temporarily rate limited.', 'rate_limited', 'gmail'],
  [421, '4.7.0', 'This message is suspicious due to the very low reputation of the sending IP address. To protect our users from spam, mail sent from your IP address has been temporarily rate limited.', 'reputation', 'gmail'],
  [550, '5.7.1', 'Our system has detected that this message is likely unsolicited mail. To reduce the amount of spam sent to Gmail, this message has been blocked.', 'policy', 'gmail'],
  [550, '5.7.1', 'The user or domain that you are sending to (or from) has a policy that prohibited the email that you sent.', 'policy', 'gmail'],
  [550, '5.7.1', 'Messages missing a valid Message-ID header are not accepted.', 'policy', 'gmail'],
  [550, '5.7.25', 'The IP address sending this message does not have a PTR record setup, or the corresponding forward DNS entry does not point to the sending IP.', 'policy', 'gmail'],
  [550, '5.7.26', 'This mail has been blocked because the sender is unauthenticated. Gmail requires all senders to authenticate with either SPF or DKIM.', 'policy', 'gmail'],
  [550, '5.7.26', "Unauthenticated email from example.com is not accepted due to domain's DMARC policy.", 'policy', 'gmail'],
  [552, '5.2.3', "Your message exceeded Google's message size limits.", 'message_too_large', 'gmail'],
  [552, '5.3.4', "Your message exceeded Google's message size limits. Please visit https://support.google.com/mail/?p=MaxSizeError", 'message_too_large', 'gmail'],
  [553, '5.1.2', "We weren't able to find the recipient domain. Please check for any spelling errors, and make sure you didn't enter any spaces, periods, or other punctuation after the recipient's email address.", 'dns_failure', 'gmail'],
  [421, '4.4.5', 'Server busy, try again later.', 'rate_limited', 'gmail'],
  [451, '4.3.0', 'Mail server temporarily rejected message.', 'other', 'gmail'],
  [454, '4.7.0', 'Cannot authenticate due to temporary system problem. Try again later.', 'other', 'gmail'],
  [452, '4.5.3', 'Your message has too many recipients.', 'other', 'gmail'],
  [554, '5.6.0', 'Mail message is malformed. Not accepted.', 'other', 'gmail'],
  // Microsoft (Exchange Online, Outlook.com)
  [550, '5.1.1', 'RESOLVER.ADR.RecipNotFound; not found', 'user_unknown', 'microsoft'],
  [550, '5.1.10', 'RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup', 'user_unknown', 'microsoft'],
  [550, '5.4.1', 'Recipient address rejected: Access denied. AS(201806281) [DB5EUR03FT012.eop-EUR03.prod.protection.outlook.com]', 'user_unknown', 'microsoft'],
  [550, '5.7.606', 'Access denied, banned sending IP [198.51.100.7]. To request removal from this list please visit https://sender.office.com/ and follow the directions.', 'reputation', 'microsoft'],
  [550, '5.7.708', 'Service unavailable. Access denied, traffic not accepted from this IP.', 'reputation', 'microsoft'],
  [550, '5.7.1', 'Service unavailable, Client host [198.51.100.7] blocked using Spamhaus. To request removal from this list see https://www.spamhaus.org/query/ip/198.51.100.7', 'reputation', 'microsoft'],
  [550, '5.7.509', 'Access denied, sending domain example.com does not pass DMARC verification and has a DMARC policy of reject.', 'policy', 'microsoft'],
  [550, '5.7.133', 'RESOLVER.RST.SenderNotAuthenticatedForGroup; authentication required; Delivery restriction check failed because the sender was not authenticated when sending to this group', 'policy', 'microsoft'],
  [550, '5.7.520', 'Access denied, Your organization does not allow external forwarding. Please contact your administrator for further assistance.', 'policy', 'microsoft'],
  [451, '4.7.500', 'Server busy. Please try again later from [198.51.100.7]. (S77719) [Name=Protocol Filter Agent]', 'rate_limited', 'microsoft'],
  [421, '4.3.2', 'The maximum number of concurrent server connections has exceeded a limit, closing transmission channel', 'rate_limited', 'microsoft'],
  [552, '5.3.4', 'Message size exceeds fixed maximum message size', 'message_too_large', 'microsoft'],
  [554, '5.2.2', 'mailbox full; STOREDRV.Deliver.Exception:QuotaExceededException.MapiExceptionShutoffQuotaExceeded', 'mailbox_full', 'microsoft'],
  [554, '5.4.14', 'Hop count exceeded - possible mail loop ATTR34', 'other', 'microsoft'],
  [550, '5.7.1', 'Unfortunately, messages from [198.51.100.7] weren\'t sent. Please contact your Internet service provider since part of their network is on our block list (S3150).', 'reputation', 'microsoft'],
  // Yahoo and AOL
  [421, '4.7.0', '[TSS04] Messages from 198.51.100.7 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes', 'rate_limited', 'yahoo'],
  [553, '5.7.2', '[TSS09] All messages from 198.51.100.7 will be permanently deferred; Retrying will NOT succeed. See https://postmaster.yahooinc.com/error-codes', 'reputation', 'yahoo'],
  [421, '4.7.1', '[TS03] All messages from 198.51.100.7 will be permanently deferred; Retrying will NOT succeed. See https://postmaster.yahooinc.com/error-codes', 'reputation', 'yahoo'],
  [553, '5.7.1', "[BL21] Connections will not be accepted from 198.51.100.7, because the ip is in Spamhaus's list; see https://postmaster.yahooinc.com/error-codes", 'reputation', 'yahoo'],
  [554, '5.7.9', 'Message not accepted for policy reasons. See https://postmaster.yahooinc.com/error-codes', 'policy', 'yahoo'],
  [552, '', '1 Requested mail action aborted, mailbox not found', 'user_unknown', 'yahoo'],
  [554, '', "delivery error: dd This user doesn't have a yahoo.com account (bob@yahoo.com) [0] - mta1234.mail.bf1.yahoo.com", 'user_unknown', 'yahoo'],
  [554, '', 'delivery error: dd Sorry your message to bob@aol.com cannot be delivered. This mailbox is disabled (554.30). - mta1234.mail.bf1.yahoo.com', 'user_unknown', 'yahoo'],
  [552, '', 'mailbox over quota', 'mailbox_full', 'yahoo'],
  [451, '', 'Message temporarily deferred - [160]', 'other', 'yahoo'],
  // Apple iCloud, Comcast, GMX, Zoho
  [550, '5.1.1', '<bob@icloud.com>: user does not exist', 'user_unknown', 'icloud'],
  [554, '5.7.1', '[CS01] Message rejected due to local policy. Please visit https://support.apple.com/en-us/HT204137', 'policy', 'icloud'],
  [554, '5.7.1', '[HM08] Message rejected due to local policy. Please visit https://support.apple.com/en-us/HT204137', 'policy', 'icloud'],
  [554, '', 'resimta-po-01v.sys.comcast.net resimta-po-01v.sys.comcast.net 198.51.100.7 found on one or more DNSBLs, see http://postmaster.comcast.net/smtp-error-codes.php#BL000000', 'reputation', 'comcast'],
  [550, '', 'Requested action not taken: mailbox unavailable (in reply to RCPT TO command)', 'user_unknown', 'gmx'],
  [554, '', '-Transaction failed Reject due to policy restrictions. For explanation visit https://postmaster.gmx.net/en/error-messages?ip=198.51.100.7&c=hi', 'policy', 'gmx'],
  [554, '5.7.1', 'Email rejected due to security policies - https://www.zoho.com/mail/help/tools/spam-policy.html', 'policy', 'zoho'],
  // Postfix, Exim, gateways
  [550, '5.1.1', '<bob@example.org>: Recipient address rejected: User unknown in local recipient table', 'user_unknown', 'postfix'],
  [550, '5.1.1', '<bob@example.org>: Recipient address rejected: User unknown in virtual mailbox table', 'user_unknown', 'postfix'],
  [554, '5.7.1', '<bob@example.org>: Relay access denied', 'policy', 'postfix'],
  [450, '4.7.1', '<bob@example.org>: Recipient address rejected: Greylisted, see http://postgrey.schweikert.ch/help/example.org.html', 'other', 'postfix'],
  [450, '4.7.1', 'Client host rejected: cannot find your hostname, [198.51.100.7]', 'policy', 'postfix'],
  [550, '5.7.1', 'Service unavailable; client [198.51.100.7] blocked using zen.spamhaus.org', 'reputation', 'postfix'],
  [452, '4.2.2', '<bob@example.org>: Recipient address rejected: Over quota', 'mailbox_full', 'postfix'],
  [552, '5.2.2', 'Mailbox size limit exceeded', 'mailbox_full', 'postfix'],
  [451, '4.3.0', '<bob@example.org>: Temporary lookup failure', 'other', 'postfix'],
  [550, '', 'No such user here', 'user_unknown', 'exim'],
  [554, '5.7.1', 'This message has been blocked because it contains a virus', 'policy', 'exim'],
  [554, '5.7.1', 'Rejected by rule 7 Reason: https://support.proofpoint.com/dnsbl-lookup.cgi?ip=198.51.100.7', 'reputation', 'proofpoint'],
  [554, '', 'Service unavailable; Client host [198.51.100.7] blocked using Barracuda Reputation, see http://www.barracudanetworks.com/reputation/?r=1&ip=198.51.100.7', 'reputation', 'barracuda'],
  [550, '', 'Rejected by header based Anti-Spoofing policy: bob@example.org', 'policy', 'mimecast'],
  [451, '', 'Internal resource temporarily unavailable - https://community.mimecast.com/docs/DOC-1369#451', 'other', 'mimecast'],
  // Tern's own synthesized failures (delivery)
  [554, '5.4.4', 'nosuch.example: no MX, A or AAAA record (NXDOMAIN)', 'dns_failure', 'tern'],
  [550, '5.1.10', 'Recipient domain example.org has a null MX (RFC 7505)', 'dns_failure', 'tern'],
  [451, '4.4.3', 'example.org: DNS lookup failed (SERVFAIL)', 'dns_failure', 'tern'],
  [550, '5.7.10', 'REQUIRETLS: no next hop of example.org offers verified TLS with REQUIRETLS', 'tls_failure', 'tern'],
  [451, '4.7.5', 'TLS handshake with mx.example.org failed: certificate has expired', 'tls_failure', 'tern'],
  [451, '4.4.1', 'connection to mx.example.org[203.0.113.5]:25 timed out', 'other', 'tern'],
  [554, '5.6.3', 'the message cannot be converted to 7 bit for a next hop without 8BITMIME (8-bit bytes in a header)', 'other', 'tern'],
];

test(`at least 95% of ${CORPUS.length} real replies are classified as a person would`, () => {
  assert.ok(CORPUS.length >= 60, 'a corpus of at least 60 replies');
  const wrong = CORPUS.filter(([code, enhanced, text, want]) => classifyReply({ code, enhanced, text }) !== want);
  const share = (CORPUS.length - wrong.length) / CORPUS.length;
  const report = wrong.map(([code, enhanced, text, want, source]) => `  ${source}: ${code} ${enhanced} ${text.slice(0, 70)}... -> ${classifyReply({ code, enhanced, text })}, a person says ${want}`);
  console.log(`bounce classification: ${CORPUS.length - wrong.length} of ${CORPUS.length} right (${(share * 100).toFixed(1)}%)${report.length ? `; wrong:\n${report.join('\n')}` : ''}`);
  assert.ok(share >= 0.95, `${(share * 100).toFixed(1)}% right:\n${report.join('\n')}`);
});
