-- The webhooks service's tables (schema webhooks; applied by the migrate
-- command with search_path set to it). Endpoints are configuration made
-- through the admin API; deliveries are the outbox of webhook messages, one
-- row per event per endpoint, written by the events consumer and sent by
-- the sender loop of any webhooks pod.

CREATE TABLE endpoints (
  id text PRIMARY KEY,
  url text NOT NULL,
  description text NOT NULL DEFAULT '',
  -- Lifecycle event type names (delivered, bounced, ...); empty: all.
  event_types text[] NOT NULL DEFAULT '{}',
  batch boolean NOT NULL DEFAULT false,
  -- The 32 secret bytes, sealed under TERN_WEBHOOKS_KEK when secret_sealed
  -- (AES-256-GCM bound to the id), as they are otherwise. Never returned by
  -- any call after the one that made it.
  secret bytea NOT NULL,
  secret_sealed boolean NOT NULL,
  state text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'suspended')),
  suspended_reason text NOT NULL DEFAULT '',
  suspended_at timestamptz,
  consecutive_failures integer NOT NULL DEFAULT 0,
  -- After a failed attempt no new attempt starts before this (endpoint backoff).
  retry_after timestamptz,
  last_success_at timestamptz,
  last_error text NOT NULL DEFAULT '',
  -- Deliveries in state pending: kept with them, bounded by TERN_WEBHOOKS_MAX_PENDING.
  pending bigint NOT NULL DEFAULT 0,
  created_at timestamptz NOT NULL DEFAULT now(),
  created_by text NOT NULL DEFAULT '',
  updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE deliveries (
  id bigserial PRIMARY KEY,
  endpoint_id text NOT NULL REFERENCES endpoints (id) ON DELETE CASCADE,
  event_id text NOT NULL,
  -- "message.delivered", ...
  event_type text NOT NULL,
  queue_id text NOT NULL DEFAULT '',
  -- The event as the JSON object sent (Standard Webhooks payload); cleared
  -- once delivered or dropped.
  payload text,
  state text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'dropped')),
  attempts integer NOT NULL DEFAULT 0,
  -- Pending: due at; while an attempt runs, the end of its lease (a pod
  -- killed mid-attempt leaves it due again then).
  next_attempt_at timestamptz NOT NULL DEFAULT now(),
  last_status integer NOT NULL DEFAULT 0,
  last_error text NOT NULL DEFAULT '',
  created_at timestamptz NOT NULL DEFAULT now(),
  expires_at timestamptz NOT NULL,
  finished_at timestamptz,
  dropped_reason text NOT NULL DEFAULT '',
  -- At least once from the events stream, once per endpoint here.
  UNIQUE (endpoint_id, event_id)
);

-- The sender's claim: an endpoint's due deliveries, oldest first.
CREATE INDEX deliveries_due ON deliveries (endpoint_id, next_attempt_at) WHERE state = 'pending';
-- Expiry sweep.
CREATE INDEX deliveries_expiry ON deliveries (expires_at) WHERE state = 'pending';
-- History purge.
CREATE INDEX deliveries_finished ON deliveries (finished_at) WHERE state <> 'pending';
-- Listing an endpoint's deliveries newest first.
CREATE INDEX deliveries_listing ON deliveries (endpoint_id, id DESC);
