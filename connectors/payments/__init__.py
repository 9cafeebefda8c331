"""Payment providers and banks: one reader (or client) per source, each with its own records."""
