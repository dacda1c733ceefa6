-- The suppression list: recipients whose delivery failed permanently. Bounce
-- adds them (TERN_BOUNCE_SUPPRESS_HARD_FAILURES); an operator lists and
-- removes them through the admin API. Authenticated submission to a listed
-- address is refused at RCPT (TERN_SUPPRESSION_ENFORCE).
CREATE TABLE suppressions (
  address    text PRIMARY KEY,               -- local part as given, domain lower-cased
  domain     text NOT NULL,
  reason     text NOT NULL DEFAULT '',
  queue_id   text NOT NULL DEFAULT '',
  created_by text NOT NULL DEFAULT '',
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX suppressions_domain ON suppressions (domain, address);
