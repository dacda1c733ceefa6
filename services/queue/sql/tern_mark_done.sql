-- tern_mark_done: generated from services/queue/src by `npm run sql:snapshot`; do not edit.
UPDATE messages m SET done_at = now() WHERE m.id = ANY($1::text[]) AND m.done_at IS NULL
       AND (SELECT count(*) FROM recipients r WHERE r.message_id = m.id AND r.state IN (1,2,3,6)) = 0
