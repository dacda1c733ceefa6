-- tern_ensure_dests: generated from services/queue/src by `npm run sql:snapshot`; do not edit.
INSERT INTO destinations (name, concurrency_limit, tokens)
     SELECT n, $2, $3 FROM unnest($1::text[]) AS t(n) ORDER BY n ON CONFLICT (name) DO NOTHING
