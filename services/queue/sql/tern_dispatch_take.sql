-- tern_dispatch_take: generated from services/queue/src by `npm run sql:snapshot`; do not edit.
-- The destination limits in it are the defaults (TERN_QUEUE_DEST_* unset).
WITH g AS (UPDATE destinations d SET inflight = d.inflight + t.n,
        tokens = CASE WHEN 0 = 0 THEN d.tokens ELSE LEAST(1, d.tokens + EXTRACT(EPOCH FROM (now() - d.tokens_at)) * 0 / 60.0) - t.n END,
        tokens_at = now(), updated_at = now()
     FROM unnest($1::text[], $2::int[]) AS t(name, n)
     WHERE d.name = t.name AND NOT d.suspended
       AND d.name IN (SELECT name FROM destinations WHERE name = ANY($1::text[]) ORDER BY name FOR UPDATE)
       AND ((d.dead_until IS NULL AND d.inflight + t.n <= d.concurrency_limit) OR (d.dead_until <= now() AND d.inflight = 0 AND t.n = 1))
       AND (0 = 0 OR LEAST(1, d.tokens + EXTRACT(EPOCH FROM (now() - d.tokens_at)) * 0 / 60.0) >= t.n)
     RETURNING d.name, t.n AS granted),
     u AS (
       UPDATE recipients r SET state = 2, job_id = t.j, lease_expires_at = $7, updated_at = now()
       FROM unnest($3::text[], $4::int[], $5::text[], $6::text[]) AS t(m, i, j, d)
       WHERE r.message_id = t.m AND r.idx = t.i AND t.d IN (SELECT name FROM g)),
     o AS (INSERT INTO outbox (subject, msg_id, payload, trace, body_of)
       SELECT x.s, x.m, substring($10::bytea from x.po + 1 for x.pl), x.t::jsonb, x.b
       FROM unnest($8::text[], $9::text[], $11::int[], $12::int[], $13::text[], $15::text[], $14::text[], $16::int[])
         AS x(s, m, po, pl, t, b, d, k)
       WHERE x.d IS NULL OR x.k <= (SELECT g.granted FROM g WHERE g.name = x.d)
       RETURNING id, msg_id)
     SELECT (SELECT array_agg(name) FROM g) AS granted, (SELECT json_agg(json_build_object('id', id, 'msg_id', msg_id)) FROM o) AS outbox
