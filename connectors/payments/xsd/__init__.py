"""The official ISO 20022 XSDs of camt.052, camt.053 and camt.054 (see README.md here)."""
