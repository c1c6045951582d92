"""The HTTP side: the dashboard-port ops app (/health, /metrics) and the monitoring server."""
