-- tern_enq_bodies: generated from services/queue/src by `npm run sql:snapshot`; do not edit.
INSERT INTO body_chunks (message_id, seq, data)
             SELECT m, 0, substring($2::bytea from o + 1 for l) FROM unnest($1::text[], $3::int[], $4::int[]) AS x(m, o, l)
