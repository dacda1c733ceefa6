-- A delivery job that carries its message's body (DeliveryJob.body) is
-- stored in the outbox WITHOUT it: the body is already in body_chunks, and
-- writing it twice per message was a quarter of the bytes Postgres wrote.
-- The relay publishes the committed job from memory with the body attached;
-- a row republished after a crash gets the body back from body_chunks.
ALTER TABLE outbox ADD COLUMN body_of text;
