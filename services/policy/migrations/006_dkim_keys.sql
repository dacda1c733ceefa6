-- DKIM signing keys, managed through the admin API (tern dkim ...) and
-- fetched by delivery. The private key is stored sealed (AES-256-GCM under
-- the key-encryption key TERN_DKIM_KEK, bound to domain and selector), never
-- as PEM; a retired key's sealed private key is erased.
--
-- A key is `published` (its TXT record is out, it does not sign yet) until
-- activate_at, then `active` (it signs) until a newer key of the same domain
-- and algorithm becomes active or an operator retires it: `retired`. At most
-- one key per domain and algorithm is active, and at most one waits.
CREATE TABLE dkim_keys (
  domain       text NOT NULL,
  selector     text NOT NULL,
  algorithm    text NOT NULL CHECK (algorithm IN ('rsa', 'ed25519')),
  bits         integer NOT NULL DEFAULT 0,
  -- The p= value of the TXT record: base64 of the SubjectPublicKeyInfo (RSA)
  -- or of the raw 32-byte key (Ed25519, RFC 8463).
  public_key   text NOT NULL,
  sealed_key   bytea,
  state        text NOT NULL CHECK (state IN ('published', 'active', 'retired')),
  created_at   timestamptz NOT NULL DEFAULT now(),
  created_by   text NOT NULL,
  -- published: when it becomes the signing key; active: when it did.
  activate_at  timestamptz NOT NULL,
  retired_at   timestamptz,
  PRIMARY KEY (domain, selector),
  CHECK ((state = 'retired') = (sealed_key IS NULL))
);
CREATE UNIQUE INDEX dkim_keys_one_active ON dkim_keys (domain, algorithm) WHERE state = 'active';
CREATE UNIQUE INDEX dkim_keys_one_waiting ON dkim_keys (domain, algorithm) WHERE state = 'published';
