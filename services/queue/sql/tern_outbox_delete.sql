-- tern_outbox_delete: generated from services/queue/src by `npm run sql:snapshot`; do not edit.
DELETE FROM outbox WHERE id = ANY($1::bigint[])
