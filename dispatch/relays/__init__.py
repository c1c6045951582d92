"""Relays: where delivery hands a message over (SMTP smarthost, local capture, MX, HTTP APIs).

Every kind implements :class:`dispatch.relays.base.Relay`: one call per delivery attempt,
per-recipient outcomes back, no exception for an ordinary delivery failure.
"""
