-- Rate-limit counters shared by every policy pod (fixed windows, read as a
-- sliding window by weighting the previous one). UNLOGGED: counters are
-- short-lived, and losing them in a crash only resets the limits.
CREATE UNLOGGED TABLE rate_counters (
  key          text NOT NULL,
  window_start bigint NOT NULL,            -- epoch seconds, a multiple of the window
  count        integer NOT NULL,
  expires_at   timestamptz NOT NULL,
  PRIMARY KEY (key, window_start)
);
CREATE INDEX rate_counters_expires ON rate_counters (expires_at);

-- Greylisting (RFC 6647): one row per (client network, sender, recipient).
CREATE TABLE greylist (
  triplet    text PRIMARY KEY,
  first_seen timestamptz NOT NULL DEFAULT now(),
  last_seen  timestamptz NOT NULL DEFAULT now(),
  passed_at  timestamptz
);
CREATE INDEX greylist_last_seen ON greylist (last_seen);

-- Auto-whitelist: client networks that retried properly often enough.
CREATE TABLE greylist_clients (
  network   text PRIMARY KEY,
  passes    integer NOT NULL DEFAULT 0,
  last_seen timestamptz NOT NULL DEFAULT now()
);
