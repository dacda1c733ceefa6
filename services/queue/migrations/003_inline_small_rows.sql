-- Keep small bodies and delivery-job payloads in the heap row. With the
-- default target (about 2 KB) a 4 KiB body or job was moved to the TOAST
-- table: a second heap insert and a TOAST index insert per row, and as many
-- deletes later, for rows that fit a page. Bigger values still go out of
-- line (STORAGE EXTERNAL: uncompressed).
ALTER TABLE body_chunks SET (toast_tuple_target = 8160);
ALTER TABLE outbox SET (toast_tuple_target = 8160);
