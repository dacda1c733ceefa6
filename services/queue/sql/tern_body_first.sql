-- tern_body_first: generated from services/queue/src by `npm run sql:snapshot`; do not edit.
SELECT m.body_removed, c.seq, c.data FROM messages m
       LEFT JOIN LATERAL (SELECT seq, data FROM body_chunks WHERE message_id = m.id ORDER BY seq LIMIT 2) c ON true
      WHERE m.id = $1 ORDER BY c.seq
