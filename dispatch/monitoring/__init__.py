"""Monitoring: in-memory counters every part of Dispatch updates, read by /metrics and /debug."""
