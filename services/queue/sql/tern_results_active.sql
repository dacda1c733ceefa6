-- tern_results_active: generated from services/queue/src by `npm run sql:snapshot`; do not edit.
SELECT r.ctid::text AS tid, r.message_id, r.idx, r.job_id, r.address, r.domain, r.orcpt, r.notify, r.attempt_count, r.expires_at,
                m.sender, m.origin, m.envelope, m.size, m.trace
         FROM unnest($1::text[], $2::int[], $3::text[]) AS t(m, i, j)
         JOIN recipients r ON r.message_id = t.m AND r.idx = t.i AND r.job_id = t.j AND r.state = 2
         JOIN messages m ON m.id = r.message_id
         ORDER BY r.message_id, r.idx
         FOR UPDATE OF r, m
