-- tern_release_finished: generated from services/queue/src by `npm run sql:snapshot`; do not edit.
SELECT j AS job_id FROM unnest($1::text[]) AS t(j)
     WHERE NOT EXISTS (SELECT 1 FROM recipients r WHERE r.job_id = t.j AND r.state = 2)
