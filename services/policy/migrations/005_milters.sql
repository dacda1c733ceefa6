-- Content filters (milters) ingress consults at the end of data, in
-- `position` order (then name). Operators manage them through the admin API
-- (tern milter set|rm); ingress reads them with PolicyService.ListMilters
-- every few seconds, so a change applies to the next message without a
-- restart. Timeouts in milliseconds; default_action is what a milter that
-- fails (down, timeout, protocol error) means for the message.
CREATE TABLE milters (
  name               text PRIMARY KEY,
  address            text NOT NULL,                  -- host:port or unix:/path
  listeners          text[] NOT NULL,                -- mx, submission, submissions
  connect_timeout_ms integer NOT NULL CHECK (connect_timeout_ms > 0),
  command_timeout_ms integer NOT NULL CHECK (command_timeout_ms > 0),
  total_timeout_ms   integer NOT NULL CHECK (total_timeout_ms > 0),
  default_action     text NOT NULL CHECK (default_action IN ('tempfail', 'accept', 'reject')),
  position           integer NOT NULL DEFAULT 0,
  created_at         timestamptz NOT NULL DEFAULT now(),
  updated_at         timestamptz NOT NULL DEFAULT now()
);
