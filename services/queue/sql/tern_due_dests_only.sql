-- tern_due_dests_only: generated from services/queue/src by `npm run sql:snapshot`; do not edit.
-- The destination limits in it are the defaults (TERN_QUEUE_DEST_* unset).
SELECT d.name, d.inflight, d.concurrency_limit, d.dead_until IS NOT NULL AS dead, LEAST(1, d.tokens + EXTRACT(EPOCH FROM (now() - d.tokens_at)) * 0 / 60.0) AS tokens
     FROM destinations d
     WHERE NOT d.suspended AND d.name = ANY($1::text[])
       AND ((d.dead_until IS NULL AND d.inflight < d.concurrency_limit) OR (d.dead_until <= now() AND d.inflight = 0))
       AND (0 = 0 OR LEAST(1, d.tokens + EXTRACT(EPOCH FROM (now() - d.tokens_at)) * 0 / 60.0) >= 1)
       AND EXISTS (SELECT 1 FROM recipients r WHERE r.domain = d.name AND r.state IN (1, 3) AND r.next_attempt_at <= now())
     ORDER BY d.updated_at
     LIMIT 500
