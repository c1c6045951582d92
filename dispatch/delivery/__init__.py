"""Delivery: due messages from the spool, routed to relays, with retries (SPEC §6)."""
