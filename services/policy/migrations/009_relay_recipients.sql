-- Relay recipients (issue 24): how RCPT to a relay domain is checked.
--   none:    every address is accepted (what the next hop refuses bounces);
--   list:    only the addresses in relay_recipients (Postfix relay_recipient_maps);
--   callout: the next hop is asked (Postfix reject_unverified_recipient), the
--            answer kept in verify_cache.
ALTER TABLE domains ADD COLUMN recipient_check text NOT NULL DEFAULT 'none'
  CHECK (recipient_check IN ('none', 'list', 'callout'));

-- The addresses of relay domains that exist: "user@domain", or "@domain"
-- (every address of the domain). Not in the policy pods' memory (an imported
-- list can be large): one primary-key lookup per RCPT that needs it. An
-- entry belongs to its domain: deleting the domain deletes its entries.
CREATE TABLE relay_recipients (
  address    text PRIMARY KEY,
  domain     text NOT NULL REFERENCES domains (name) ON DELETE CASCADE,
  created_at timestamptz NOT NULL DEFAULT now(),
  created_by text NOT NULL
);
CREATE INDEX relay_recipients_domain ON relay_recipients (domain, address);

-- Results of recipient verification callouts, shared by every policy pod.
-- A cache: unlogged (a crash empties it, and the next RCPT asks again).
-- Only definite answers are kept (ok: the next hop took RCPT with 2xx;
-- reject: 5xx); temporary failures are never stored.
CREATE UNLOGGED TABLE verify_cache (
  address     text PRIMARY KEY,
  domain      text NOT NULL,
  ok          boolean NOT NULL,
  reply_code  integer NOT NULL,
  reply_text  text NOT NULL,
  remote_host text NOT NULL DEFAULT '',
  checked_at  timestamptz NOT NULL DEFAULT now(),
  expires_at  timestamptz NOT NULL
);
CREATE INDEX verify_cache_domain ON verify_cache (domain, address);
CREATE INDEX verify_cache_expires ON verify_cache (expires_at);
