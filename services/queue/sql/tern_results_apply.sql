-- tern_results_apply: generated from services/queue/src by `npm run sql:snapshot`; do not edit.
WITH u AS (
           UPDATE recipients r SET state = t.s, next_attempt_at = t.na, job_id = NULL, lease_expires_at = NULL,
               attempt_count = r.attempt_count + 1, last_code = t.c, last_enhanced = t.e, last_text = t.x, updated_at = now()
           FROM unnest($1::tid[], $2::smallint[], $3::timestamptz[], $4::int[], $5::text[], $6::text[]) AS t(tid, s, na, c, e, x)
           WHERE r.ctid = ANY($1::tid[]) AND r.ctid = t.tid
           RETURNING r.message_id, r.idx, r.state),
         a AS (
           INSERT INTO attempts (message_id, idx, job_id, started_at, duration_ms, remote_host, remote_ip, code, enhanced, text, outcome, tls_used, tls_version, tls_cipher, tls_verified, worker, bounce_class)
           SELECT * FROM unnest($7::text[], $8::int[], $9::text[], $10::timestamptz[], $11::int[], $12::text[], $13::text[], $14::int[], $15::text[], $16::text[],
                                $17::smallint[], $18::bool[], $19::text[], $20::text[], $21::bool[], $22::text[], $32::text[])
           RETURNING 1),
         done AS (
           UPDATE messages m SET done_at = now()
           WHERE m.id IN (SELECT message_id FROM u) AND m.done_at IS NULL
             AND NOT EXISTS (SELECT 1 FROM u WHERE u.message_id = m.id AND u.state IN (1,2,3,6))
             AND (SELECT count(*) FROM recipients r WHERE r.message_id = m.id AND r.state IN (1,2,3,6)
                    AND NOT EXISTS (SELECT 1 FROM u WHERE u.message_id = r.message_id AND u.idx = r.idx)) = 0
           RETURNING 1),
         fin AS (
           SELECT DISTINCT t.j, t.d FROM unnest($23::text[], $24::text[]) AS t(j, d)
           WHERE NOT EXISTS (SELECT 1 FROM recipients r WHERE r.job_id = t.j AND r.state = 2
                               AND NOT EXISTS (SELECT 1 FROM u WHERE u.message_id = r.message_id AND u.idx = r.idx))),
         rel AS (
           UPDATE destinations d SET inflight = GREATEST(0, d.inflight - (SELECT count(*) FROM fin WHERE fin.d = d.name)),
        concurrency_limit = CASE WHEN t.failed > 0 THEN GREATEST(1, d.concurrency_limit - t.failed)
                                 WHEN t.ok > 0 THEN LEAST($29, d.concurrency_limit + 1)
                                 ELSE d.concurrency_limit END,
        failures = CASE WHEN t.failed > 0 THEN d.failures + t.failed WHEN t.ok > 0 THEN 0 ELSE d.failures END,
        dead_until = CASE WHEN t.failed > 0 AND (d.dead_until IS NOT NULL OR d.failures + t.failed >= $30)
                            THEN now() + make_interval(secs => $31)
                          WHEN t.ok > 0 THEN NULL
                          ELSE d.dead_until END,
        last_error = CASE WHEN t.err <> '' THEN t.err ELSE d.last_error END,
        last_error_at = CASE WHEN t.err <> '' THEN now() ELSE d.last_error_at END,
        updated_at = now()
           FROM unnest($25::text[], $26::int[], $27::int[], $28::text[]) AS t(name, ok, failed, err)
           WHERE (SELECT count(*) FROM a) + (SELECT count(*) FROM done) >= 0
             AND d.name = t.name
             AND d.name IN (SELECT name FROM destinations WHERE name = ANY($25::text[]) ORDER BY name FOR UPDATE)
           RETURNING d.name)
         SELECT array_agg(rel.name) AS due FROM rel
         WHERE EXISTS (SELECT 1 FROM recipients r WHERE r.domain = rel.name AND r.state IN (1, 3) AND r.next_attempt_at <= now())
