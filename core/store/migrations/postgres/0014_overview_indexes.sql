-- The admin overview: sessions per day, and each integration's latest traffic.
CREATE INDEX inbound_provider_received ON inbound (provider, received_at);
CREATE INDEX deliveries_surface_updated ON deliveries (surface, updated_at);
CREATE INDEX model_usage_at ON model_usage (at);
