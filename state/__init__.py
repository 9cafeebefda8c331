"""vouchflow's own state: watermarks, cross-references, fingerprints, outbox, dead letters,
run ledger. SQLite by default, PostgreSQL when more than one worker runs."""
