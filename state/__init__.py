"""vouchflow's own state: watermarks, cross-references, fingerprints, outbox, dead letters,
run ledger, the code pool and the catalogue. SQLite by default, PostgreSQL when more than one
worker runs."""

import state.catalog  # noqa: F401  (registers its table with the others)
