-- Policy data: domains, mailboxes, aliases, submission users, and the audit
-- trail of every change. Every write notifies 'tern_policy_changed' so each
-- policy pod reloads its in-memory copy within moments.

CREATE TABLE domains (
  name             text PRIMARY KEY,
  kind             text NOT NULL CHECK (kind IN ('local', 'relay')),
  catch_all        text NOT NULL DEFAULT '',
  max_message_size bigint NOT NULL DEFAULT 0 CHECK (max_message_size >= 0),
  created_at       timestamptz NOT NULL DEFAULT now(),
  updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE mailboxes (
  address    text PRIMARY KEY,
  domain     text NOT NULL REFERENCES domains (name),
  enabled    boolean NOT NULL DEFAULT true,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX mailboxes_domain ON mailboxes (domain);

CREATE TABLE aliases (
  address    text PRIMARY KEY,
  domain     text NOT NULL REFERENCES domains (name),
  targets    text[] NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX aliases_domain ON aliases (domain);

CREATE TABLE users (
  username        text PRIMARY KEY,
  -- scrypt$<N>$<r>$<p>$<salt b64>$<hash b64>
  password_hash   text NOT NULL DEFAULT '',
  allowed_senders text[] NOT NULL DEFAULT '{}',
  may_relay       boolean NOT NULL DEFAULT false,
  enabled         boolean NOT NULL DEFAULT true,
  created_at      timestamptz NOT NULL DEFAULT now(),
  updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE audit (
  id        bigserial PRIMARY KEY,
  at        timestamptz NOT NULL DEFAULT now(),
  operator  text NOT NULL,
  action    text NOT NULL,          -- put | delete
  entity    text NOT NULL,          -- domain | mailbox | alias | user
  key       text NOT NULL,
  detail    jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_entity_key ON audit (entity, key, at);

CREATE FUNCTION notify_policy_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('tern_policy_changed', TG_TABLE_NAME);
  RETURN NULL;
END;
$$;

CREATE TRIGGER domains_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON domains
  FOR EACH STATEMENT EXECUTE FUNCTION notify_policy_changed();
CREATE TRIGGER mailboxes_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON mailboxes
  FOR EACH STATEMENT EXECUTE FUNCTION notify_policy_changed();
CREATE TRIGGER aliases_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON aliases
  FOR EACH STATEMENT EXECUTE FUNCTION notify_policy_changed();
CREATE TRIGGER users_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON users
  FOR EACH STATEMENT EXECUTE FUNCTION notify_policy_changed();
