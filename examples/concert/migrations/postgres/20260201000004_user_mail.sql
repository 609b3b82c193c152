-- The user's mail address, carried by the payment-completed event (seed 003's
-- PaymentCompletedEvent.mail).
ALTER TABLE app_user ADD COLUMN IF NOT EXISTS mail text;
