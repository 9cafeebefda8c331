"""One package per external system: a typed client over its wire protocol.

Connectors know their own record types, never the canonical model's mapping; the shared
toolkit (errors, retries, limits, paging, redaction) lives beside them.
"""
