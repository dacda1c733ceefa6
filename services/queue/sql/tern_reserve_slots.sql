-- tern_reserve_slots: generated from services/queue/src by `npm run sql:snapshot`; do not edit.
-- The destination limits in it are the defaults (TERN_QUEUE_DEST_* unset).
UPDATE destinations d SET inflight = d.inflight + t.n,
        tokens = CASE WHEN 0 = 0 THEN d.tokens ELSE LEAST(1, d.tokens + EXTRACT(EPOCH FROM (now() - d.tokens_at)) * 0 / 60.0) - t.n END,
        tokens_at = now(), updated_at = now()
     FROM unnest($1::text[], $2::int[]) AS t(name, n)
     WHERE d.name = t.name AND NOT d.suspended
       AND d.name IN (SELECT name FROM destinations WHERE name = ANY($1::text[]) ORDER BY name FOR UPDATE)
       AND d.dead_until IS NULL AND d.inflight + t.n <= d.concurrency_limit
       AND (0 = 0 OR LEAST(1, d.tokens + EXTRACT(EPOCH FROM (now() - d.tokens_at)) * 0 / 60.0) >= t.n)
     RETURNING d.name, t.n AS granted
