"""vouchflow's own state: watermarks, cross-references, fingerprints, outbox, dead letters,
run ledger, the code pool and the catalogue. SQLite by default, PostgreSQL when more than one
worker runs."""

# importing these registers their tables with the others
import state.catalog
import state.subscriptions  # noqa: F401  (and state.events)
