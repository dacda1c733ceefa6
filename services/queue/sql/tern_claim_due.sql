-- tern_claim_due: generated from services/queue/src by `npm run sql:snapshot`; do not edit.
SELECT r.message_id, r.idx, r.address, r.domain, r.orcpt, r.notify, r.attempt_count, extract(epoch FROM now() - r.next_attempt_at)::float8 AS due_lag_s
     FROM unnest($1::text[], $2::int[]) AS d(name, lim)
     CROSS JOIN LATERAL (
       SELECT message_id, idx, address, domain, orcpt, notify, attempt_count, next_attempt_at FROM recipients
       WHERE domain = d.name AND state IN (1, 3) AND next_attempt_at <= now() AND expires_at > now()
       ORDER BY next_attempt_at LIMIT d.lim
       FOR UPDATE SKIP LOCKED) r
