"""The local control socket: how ``python -m dispatch spool …`` talks to a running daemon."""
