-- Why a delivery needed nothing (an event Airlock does not act on, a comment without a
-- request): such a delivery keeps its key and this, and its payload is dropped at once.
ALTER TABLE inbound ADD COLUMN verdict TEXT;
