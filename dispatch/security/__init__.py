"""Secrets at rest: password hashing and verification."""
