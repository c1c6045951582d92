"""Intake: where mail enters Dispatch (the SMTP listener; the HTTP API beside it)."""
