-- tern_enq_one_skip: generated from services/queue/src by `npm run sql:snapshot`; do not edit.
-- The destination limits in it are the defaults (TERN_QUEUE_DEST_* unset).
WITH m AS (
         INSERT INTO messages (id, sender, envelope, origin, size, trace, rcpt_count, created_at)
         SELECT i, s, e, o, z, t::jsonb, n, $9 FROM unnest($3::text[], $4::text[], $5::bytea[], $6::smallint[], $7::bigint[], $8::text[], $10::int[])
           AS x(i, s, e, o, z, t, n)
         RETURNING 1),
       b AS (
         INSERT INTO body_chunks (message_id, seq, data)
         SELECT i, 0, substring($31::bytea from bo + 1 for bl) FROM unnest($3::text[], $27::int[], $28::int[]) AS x(i, bo, bl)
         RETURNING 1),
       s AS (
       SELECT d.name, LEAST(t.n, d.concurrency_limit - d.inflight, CASE WHEN 0 = 0 THEN t.n ELSE floor(LEAST(1, d.tokens + EXTRACT(EPOCH FROM (now() - d.tokens_at)) * 0 / 60.0))::int END) AS k
       FROM destinations d JOIN unnest($1::text[], $2::int[]) AS t(name, n) ON d.name = t.name
       WHERE (SELECT count(*) FROM m) + (SELECT count(*) FROM b) >= 0 AND NOT d.suspended AND d.dead_until IS NULL AND LEAST(t.n, d.concurrency_limit - d.inflight, CASE WHEN 0 = 0 THEN t.n ELSE floor(LEAST(1, d.tokens + EXTRACT(EPOCH FROM (now() - d.tokens_at)) * 0 / 60.0))::int END) > 0
       ORDER BY d.name
       FOR UPDATE OF d SKIP LOCKED),
     g AS (
       UPDATE destinations d SET inflight = d.inflight + s.k,
              tokens = CASE WHEN 0 = 0 THEN d.tokens ELSE LEAST(1, d.tokens + EXTRACT(EPOCH FROM (now() - d.tokens_at)) * 0 / 60.0) - s.k END,
              tokens_at = now(), updated_at = now()
       FROM s WHERE d.name = s.name
       RETURNING d.name, s.k AS granted),
       r AS (
         INSERT INTO recipients (message_id, idx, address, domain, orcpt, notify, state, created_at, expires_at, next_attempt_at, job_id, lease_expires_at)
         SELECT x.m, x.i, x.a, x.d, x.o, x.n::smallint[],
                CASE WHEN x.h THEN 6 WHEN x.granted THEN 2 ELSE 1 END,
                $9, $19, CASE WHEN x.h THEN NULL ELSE $9 END,
                CASE WHEN x.granted THEN x.j END,
                CASE WHEN x.granted THEN $20::timestamptz END
         FROM (SELECT u.*, u.j IS NOT NULL AND u.k <= (SELECT g.granted FROM g WHERE g.name = u.d) AS granted
               FROM unnest($12::text[], $13::int[], $14::text[], $15::text[], $16::text[], $17::text[], $18::bool[], $21::text[], $32::int[]) AS u(m, i, a, d, o, n, h, j, k)) x
         RETURNING state),
       o AS (INSERT INTO outbox (subject, msg_id, payload, trace, body_of)
       SELECT x.s, x.m, substring($24::bytea from x.po + 1 for x.pl), x.t::jsonb, x.b
       FROM unnest($22::text[], $23::text[], $29::int[], $30::int[], $25::text[], $11::text[], $26::text[], $33::int[])
         AS x(s, m, po, pl, t, b, d, k)
       WHERE x.d IS NULL OR x.k <= (SELECT g.granted FROM g WHERE g.name = x.d)
       RETURNING id, msg_id)
       SELECT (SELECT json_object_agg(name, granted) FROM g) AS granted, (SELECT count(*)::int FROM r WHERE state = 1) AS queued,
              (SELECT json_agg(json_build_object('id', id, 'msg_id', msg_id)) FROM o) AS outbox
