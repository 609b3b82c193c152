-- The W3C traceparent of the request that created the payment: the recovery
-- scheduler settles a stuck payment in that request's trace.
ALTER TABLE payment ADD COLUMN traceparent TEXT;
