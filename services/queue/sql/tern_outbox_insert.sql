-- tern_outbox_insert: generated from services/queue/src by `npm run sql:snapshot`; do not edit.
INSERT INTO outbox (subject, msg_id, payload, trace, body_of)
       SELECT x.s, x.m, substring($3::bytea from x.po + 1 for x.pl), x.t::jsonb, x.b
       FROM unnest($1::text[], $2::text[], $5::int[], $6::int[], $4::text[], $7::text[])
         AS x(s, m, po, pl, t, b)
       RETURNING id, msg_id
