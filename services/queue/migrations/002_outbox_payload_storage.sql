-- Delivery jobs may carry a small body (DeliveryJob.body): store outbox
-- payloads out of line without compression, like body_chunks.data. A row
-- lives for milliseconds; compressing it would cost more than it saves.
ALTER TABLE outbox ALTER COLUMN payload SET STORAGE EXTERNAL;
