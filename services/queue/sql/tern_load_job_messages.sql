-- tern_load_job_messages: generated from services/queue/src by `npm run sql:snapshot`; do not edit.
SELECT m.id, m.envelope, m.size, m.trace, m.size <= $2 AND NOT m.body_removed AS inline,
            CASE WHEN m.size <= $2 AND NOT m.body_removed AND NOT m.id = ANY($3::text[])
                 THEN (SELECT data FROM body_chunks b WHERE b.message_id = m.id AND b.seq = 0) END AS body
       FROM messages m WHERE m.id = ANY($1::text[])
