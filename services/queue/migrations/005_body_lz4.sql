-- Bodies out of line are compressed with lz4 where the server has it
-- (Postgres 14+ built --with-lz4, as Debian's and the official images are).
-- Stored uncompressed (STORAGE EXTERNAL) a 64 KiB body cost as many TOAST
-- rows and as much WAL as its size; pglz, the default method, costs more CPU
-- than that (1.4 ms per 64 KiB of base64 that it then fails to compress). lz4
-- stores text and HTML at a fraction of the WAL and CPU, and gives up on
-- incompressible attachments nearly for free. Rows stored before keep their form.
DO $$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression' AND 'lz4' = ANY(enumvals)) THEN
    ALTER TABLE body_chunks ALTER COLUMN data SET STORAGE EXTENDED;
    ALTER TABLE body_chunks ALTER COLUMN data SET COMPRESSION lz4;
  END IF;
END
$$;
