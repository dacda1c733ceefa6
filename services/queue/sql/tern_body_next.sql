-- tern_body_next: generated from services/queue/src by `npm run sql:snapshot`; do not edit.
SELECT seq, data FROM body_chunks WHERE message_id = $1 AND seq > $2 ORDER BY seq LIMIT 2
