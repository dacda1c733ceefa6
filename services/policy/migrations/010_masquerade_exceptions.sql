-- Masquerade exceptions (Postfix masquerade_exceptions): local parts such as
-- root or mailer-daemon that masquerading never shortens, stored as rewrite
-- rules of their own kind next to the masquerade domains: match is the
-- local part (lower-cased), no target, no headers flag (an exception holds
-- wherever masquerading applies).
ALTER TABLE rewrites DROP CONSTRAINT rewrites_kind_check;
ALTER TABLE rewrites ADD CONSTRAINT rewrites_kind_check
  CHECK (kind IN ('sender_canonical', 'recipient_canonical', 'canonical', 'masquerade', 'masquerade_exception', 'sender_bcc', 'recipient_bcc'));
