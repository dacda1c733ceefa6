-- tern_enq_messages: generated from services/queue/src by `npm run sql:snapshot`; do not edit.
INSERT INTO messages (id, idempotency_key, sender, envelope, origin, size, trace, rcpt_count, created_at)
         SELECT i, NULLIF(k, ''), s, e, o, z, t::jsonb, n, $9 FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::smallint[], $6::bigint[], $7::text[], $8::int[])
           AS x(i, k, s, e, o, z, t, n)
         ON CONFLICT (idempotency_key) DO NOTHING RETURNING id
