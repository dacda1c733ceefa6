-- Rate-limit rules, managed through the admin API (tern limit ...). A rule
-- sets the limit of one kind for every client/sender (match '') or for the
-- ones `match` names: a network (CIDR) for the *_per_ip kinds, a user name
-- for *_per_user, a domain for *_per_sender_domain. Where no rule applies
-- the TERN_LIMIT_* variable of that kind holds. limit_count 0 = no limit.
-- Every write notifies 'tern_policy_changed': each policy pod reloads the
-- rules with the rest of the policy data within moments.
CREATE TABLE rate_limits (
  kind           text NOT NULL CHECK (kind IN ('connections_per_ip', 'messages_per_ip', 'messages_per_user', 'recipients_per_user',
                                               'messages_per_sender_domain', 'recipients_per_sender_domain', 'auth_failures_per_ip')),
  match          text NOT NULL DEFAULT '',
  limit_count    integer NOT NULL CHECK (limit_count >= 0),
  window_seconds integer NOT NULL CHECK (window_seconds > 0 AND window_seconds <= 604800),
  updated_at     timestamptz NOT NULL DEFAULT now(),
  updated_by     text NOT NULL,
  PRIMARY KEY (kind, match)
);

CREATE TRIGGER rate_limits_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON rate_limits
  FOR EACH STATEMENT EXECUTE FUNCTION notify_policy_changed();
