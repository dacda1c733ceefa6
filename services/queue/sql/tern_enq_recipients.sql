-- tern_enq_recipients: generated from services/queue/src by `npm run sql:snapshot`; do not edit.
INSERT INTO recipients (message_id, idx, address, domain, orcpt, notify, state, created_at, expires_at, next_attempt_at, job_id, lease_expires_at)
           SELECT m, i, a, d, o, n::smallint[], s, $11, $12, na, j, l
           FROM unnest($1::text[], $2::int[], $3::text[], $4::text[], $5::text[], $6::text[], $7::smallint[], $8::timestamptz[], $9::text[], $10::timestamptz[])
             AS x(m, i, a, d, o, n, s, na, j, l)
