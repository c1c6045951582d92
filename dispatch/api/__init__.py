"""The HTTP ingestion API (SPEC §4)."""
