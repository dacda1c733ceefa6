-- tern_release_dests: generated from services/queue/src by `npm run sql:snapshot`; do not edit.
UPDATE destinations d SET inflight = GREATEST(0, d.inflight - t.jobs),
        concurrency_limit = CASE WHEN t.failed > 0 THEN GREATEST(1, d.concurrency_limit - t.failed)
                                 WHEN t.ok > 0 THEN LEAST($6, d.concurrency_limit + 1)
                                 ELSE d.concurrency_limit END,
        failures = CASE WHEN t.failed > 0 THEN d.failures + t.failed WHEN t.ok > 0 THEN 0 ELSE d.failures END,
        dead_until = CASE WHEN t.failed > 0 AND (d.dead_until IS NOT NULL OR d.failures + t.failed >= $7)
                            THEN now() + make_interval(secs => $8)
                          WHEN t.ok > 0 THEN NULL
                          ELSE d.dead_until END,
        last_error = CASE WHEN t.err <> '' THEN t.err ELSE d.last_error END,
        last_error_at = CASE WHEN t.err <> '' THEN now() ELSE d.last_error_at END,
        updated_at = now()
     FROM unnest($1::text[], $2::int[], $3::int[], $4::int[], $5::text[]) AS t(name, jobs, ok, failed, err)
     WHERE d.name = t.name AND d.name IN (SELECT name FROM destinations WHERE name = ANY($1::text[]) ORDER BY name FOR UPDATE)
