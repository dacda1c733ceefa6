-- Address rewriting rules, managed through the admin API (tern canonical ...,
-- tern bcc ...), with Postfix's semantics:
--   sender_canonical, recipient_canonical, canonical (both): an address or
--     @domain (match) rewritten to an address or, for an @domain match, an
--     @domain that keeps the local part (target); `headers` rewrites the
--     header addresses (From/Sender/Reply-To, To/Cc) too, not only the envelope;
--   masquerade: a domain (match) whose subdomains senders are shortened to
--     (user@sub.example.com -> user@example.com); no target;
--   sender_bcc, recipient_bcc: an address or @domain (match) whose mail is
--     copied to an archive address (target), an added envelope recipient.
-- Every write notifies 'tern_policy_changed': each policy pod reloads the
-- rules with the rest of the policy data within moments.
CREATE TABLE rewrites (
  kind       text NOT NULL CHECK (kind IN ('sender_canonical', 'recipient_canonical', 'canonical', 'masquerade', 'sender_bcc', 'recipient_bcc')),
  match      text NOT NULL CHECK (match <> ''),
  target     text NOT NULL DEFAULT '',
  headers    boolean NOT NULL DEFAULT false,
  updated_at timestamptz NOT NULL DEFAULT now(),
  updated_by text NOT NULL,
  PRIMARY KEY (kind, match)
);

CREATE TRIGGER rewrites_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON rewrites
  FOR EACH STATEMENT EXECUTE FUNCTION notify_policy_changed();
