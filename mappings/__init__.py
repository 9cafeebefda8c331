"""Pure functions between system records and the canonical model. No I/O."""
