-- A delivery is handled by one server at a time: whoever claims it first (the request that
-- stored it, or the sweep of unhandled deliveries), for a lease that a crashed server's
-- deliveries outlive only briefly.
ALTER TABLE inbound ADD COLUMN claimed_by TEXT;
ALTER TABLE inbound ADD COLUMN claim_until BIGINT;
