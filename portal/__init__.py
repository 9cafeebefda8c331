"""vouchflow's own HTTP API: inbound webhooks, the vendor portal, operator endpoints."""
