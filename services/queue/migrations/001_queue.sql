-- The queue's durable state: messages, bodies, recipients, attempts, the
-- transactional outbox, destinations (scheduling state shared by replicas),
-- routes and operator events. States are RecipientState enum numbers:
-- 1 queued, 2 inflight, 3 deferred, 4 delivered, 5 failed, 6 held,
-- 7 expired, 8 deleted, 9 relayed.

CREATE TABLE messages (
  id              text PRIMARY KEY,          -- queue id: time-sortable, so age filters are id ranges
  idempotency_key text UNIQUE,
  sender          text NOT NULL,
  envelope        bytea NOT NULL,            -- tern.v1.Envelope protobuf
  origin          smallint NOT NULL,
  size            bigint NOT NULL,
  trace           jsonb,                     -- W3C trace context of the Enqueue call
  created_at      timestamptz NOT NULL DEFAULT now(),
  rcpt_count      integer NOT NULL,
  done_at         timestamptz,               -- every recipient final
  body_removed    boolean NOT NULL DEFAULT false
);
CREATE INDEX messages_sender ON messages (sender, id);
CREATE INDEX messages_done ON messages (done_at) WHERE done_at IS NOT NULL;

-- Body bytes in order. Small bodies are one row written with the message;
-- big ones are spilled here as they arrive (registered in spools until the
-- message commits, so an abandoned upload is reaped).
CREATE TABLE body_chunks (
  message_id text NOT NULL,
  seq        integer NOT NULL,
  data       bytea NOT NULL,
  PRIMARY KEY (message_id, seq)
);
ALTER TABLE body_chunks ALTER COLUMN data SET STORAGE EXTERNAL;

CREATE TABLE spools (
  id         text PRIMARY KEY,
  created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE recipients (
  message_id       text NOT NULL,
  idx              integer NOT NULL,
  address          text NOT NULL,
  domain           text NOT NULL,
  orcpt            text NOT NULL DEFAULT '',
  notify           smallint[] NOT NULL DEFAULT '{}',
  state            smallint NOT NULL,
  created_at       timestamptz NOT NULL DEFAULT now(),
  expires_at       timestamptz NOT NULL,
  next_attempt_at  timestamptz,
  job_id           text,
  lease_expires_at timestamptz,
  attempt_count    integer NOT NULL DEFAULT 0,
  last_code        integer,
  last_enhanced    text,
  last_text        text,
  delay_warned     boolean NOT NULL DEFAULT false,
  updated_at       timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (message_id, idx)
);
-- Scheduler: due recipients per destination.
CREATE INDEX recipients_due ON recipients (domain, next_attempt_at) WHERE state IN (1, 3);
-- Lease expiry of dispatched recipients.
CREATE INDEX recipients_lease ON recipients (lease_expires_at) WHERE state = 2;
CREATE INDEX recipients_job ON recipients (job_id) WHERE state = 2;
-- Expiry and delay warnings.
CREATE INDEX recipients_expiry ON recipients (expires_at) WHERE state IN (1, 3);
CREATE INDEX recipients_delay ON recipients (created_at) WHERE state = 3 AND NOT delay_warned;
-- Listing and summaries (keyset on message_id).
CREATE INDEX recipients_domain ON recipients (domain, state, message_id);
CREATE INDEX recipients_address ON recipients (address, message_id);
CREATE INDEX recipients_state ON recipients (state, message_id);

CREATE TABLE attempts (
  id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  message_id    text NOT NULL,
  idx           integer NOT NULL,
  job_id        text NOT NULL,
  started_at    timestamptz NOT NULL,
  duration_ms   integer NOT NULL DEFAULT 0,
  remote_host   text NOT NULL DEFAULT '',
  remote_ip     text NOT NULL DEFAULT '',
  code          integer NOT NULL DEFAULT 0,
  enhanced      text NOT NULL DEFAULT '',
  text          text NOT NULL DEFAULT '',
  outcome       smallint NOT NULL,
  tls_used      boolean NOT NULL DEFAULT false,
  tls_version   text NOT NULL DEFAULT '',
  tls_cipher    text NOT NULL DEFAULT '',
  tls_verified  boolean NOT NULL DEFAULT false,
  worker        text NOT NULL DEFAULT ''
);
CREATE INDEX attempts_recipient ON attempts (message_id, idx);

-- Transactional outbox: rows written with the state change, published by the
-- relay (Nats-Msg-Id = msg_id), then deleted.
CREATE TABLE outbox (
  id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  subject    text NOT NULL,
  msg_id     text NOT NULL,
  payload    bytea NOT NULL,
  trace      jsonb,
  created_at timestamptz NOT NULL DEFAULT now()
);

-- Scheduling state per destination (recipient domain), shared by replicas.
CREATE TABLE destinations (
  name              text PRIMARY KEY,
  inflight          integer NOT NULL DEFAULT 0,      -- dispatched jobs without a result
  concurrency_limit integer NOT NULL DEFAULT 5,
  suspended         boolean NOT NULL DEFAULT false,  -- by an operator
  suspended_reason  text NOT NULL DEFAULT '',
  suspended_by      text NOT NULL DEFAULT '',
  dead_until        timestamptz,                     -- automatic suspension: probe after this
  failures          integer NOT NULL DEFAULT 0,      -- consecutive destination failures
  tokens            double precision NOT NULL DEFAULT 0,
  tokens_at         timestamptz NOT NULL DEFAULT now(),
  last_error        text NOT NULL DEFAULT '',
  last_error_at     timestamptz,
  updated_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE routes (
  domain      text PRIMARY KEY,
  kind        smallint NOT NULL,
  target      text NOT NULL DEFAULT '',
  tls         smallint NOT NULL DEFAULT 0,
  auth_user   text NOT NULL DEFAULT '',
  auth_secret text NOT NULL DEFAULT '',
  updated_by  text NOT NULL DEFAULT '',
  updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Who did what to which message (or destination, or route), and why.
CREATE TABLE operator_events (
  id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  at         timestamptz NOT NULL DEFAULT now(),
  message_id text,
  subject    text NOT NULL DEFAULT '',   -- destination or route when not a message
  operator   text NOT NULL,
  action     text NOT NULL,
  reason     text NOT NULL DEFAULT '',
  detail     jsonb
);
CREATE INDEX operator_events_message ON operator_events (message_id) WHERE message_id IS NOT NULL;
