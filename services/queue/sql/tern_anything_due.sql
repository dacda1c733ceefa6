-- tern_anything_due: generated from services/queue/src by `npm run sql:snapshot`; do not edit.
SELECT 1 FROM destinations d
       WHERE NOT d.suspended
         AND ((d.dead_until IS NULL AND d.inflight < d.concurrency_limit) OR (d.dead_until <= now() AND d.inflight = 0))
         AND EXISTS (SELECT 1 FROM recipients r WHERE r.domain = d.name AND r.state IN (1, 3) AND r.next_attempt_at <= now())
       LIMIT 1
