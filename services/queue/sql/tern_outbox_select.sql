-- tern_outbox_select: generated from services/queue/src by `npm run sql:snapshot`; do not edit.
SELECT o.id, o.subject, o.msg_id, o.payload, o.trace,
                CASE WHEN o.body_of IS NOT NULL THEN
                  (SELECT b.data FROM body_chunks b WHERE b.message_id = o.body_of AND b.seq = 0
                     AND NOT EXISTS (SELECT 1 FROM body_chunks b1 WHERE b1.message_id = o.body_of AND b1.seq = 1)) END AS body
         FROM outbox o WHERE o.id <> ALL($2::bigint[]) ORDER BY o.id LIMIT $1 FOR UPDATE OF o SKIP LOCKED
