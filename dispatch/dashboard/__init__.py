"""The dashboard (SPEC §8): the operator's pages on the dashboard port (``webui.port``, HTTPS).

Server-rendered HTML (Quart's Jinja2 templates in ``templates/``), our own small stylesheet
and script in ``static/``, nothing loaded from another host, no build step.

- :mod:`~dispatch.dashboard.app`: :func:`register_dashboard` adds it all to the port's app;
- :mod:`~dispatch.dashboard.sources`: what the pages read (:class:`DashboardSources`);
- :mod:`~dispatch.dashboard.gate`: login, CSRF and security headers on every path;
- :mod:`~dispatch.dashboard.auth`: sessions, tokens, password rules;
- :mod:`~dispatch.dashboard.login`: first-run setup, login, logout;
- :mod:`~dispatch.dashboard.render` and :mod:`~dispatch.dashboard.nav`: the layout's context
  and the menu;
- :mod:`~dispatch.dashboard.pages`: one module per page.

Its place in the layers is beside ``api`` and ``control`` (above ``web``): the web room hands
the port's app to a callable it is given, never importing the dashboard.
"""

from dispatch.dashboard.app import register_dashboard
from dispatch.dashboard.sources import DashboardSources

__all__ = ["DashboardSources", "register_dashboard"]
