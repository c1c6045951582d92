"""Driving the dashboard of a real daemon: with Chromium (Playwright) and with httpx.

- :class:`DashboardDaemon`: a ``python -m dispatch`` subprocess (``tests/conftest.py``'s
  ``start_daemon``) with its dashboard URL, its configuration and its TLS certificate.
- :func:`set_up_in_browser` / :func:`log_in_in_browser`: the first-run page and the login
  page, filled in as a person would (Playwright's ``Page``).
- :class:`AdminClient`: an ``httpx.Client`` signed in as the admin (first run or login), with
  :meth:`AdminClient.csrf_token` and :meth:`AdminClient.post_form` for state-changing requests.
- :func:`launch_chromium`: Debian's Chromium (``/usr/bin/chromium``) with the flags STACK.md
  lists; never a downloaded browser.
- :class:`Screenshots`: ``docs/dashboard/<page>-light.png`` and ``-dark.png`` of a page
  (1280x800), written into ``docs/dashboard/`` when ``DISPATCH_SCREENSHOTS=docs`` is set
  (``nox -s screenshots``-style runs; CI leaves the tree alone), else under the test's
  ``tmp_path``. Either way both are taken and checked to be PNG images.
"""

from __future__ import annotations

import html.parser
import os
import ssl
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import attrs
import httpx
from playwright.sync_api import Browser, Page, Playwright, ViewportSize

from dispatch.dashboard.nav import NAV
from tests.conftest import Daemon
from tests.support.config import Ports, base_config, dump

ROOT: Final = Path(__file__).resolve().parents[2]
SCREENSHOT_DIR: Final = ROOT / "docs" / "dashboard"
CHROMIUM: Final = Path("/usr/bin/chromium")
CHROMIUM_ARGS: Final = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
VIEWPORT: Final = ViewportSize(width=1280, height=800)
PASSWORD: Final = "correct horse battery staple"  # 28 characters: over the minimum of 12
READY: Final = "all components ready"
# Every menu page but Debug is drawn in the dashboard's layout; /debug/ serves the monitoring
# server's own plain pages (no menu, no script at all, a policy of their own).
LAYOUT_PAGES: Final = tuple(entry for entry in NAV if entry.key != "debug")


@attrs.frozen
class DashboardDaemon:
    """A running daemon and where its dashboard is."""

    daemon: Daemon
    root: Path
    ports: Ports
    config: dict[str, Any]

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.ports.webui}"

    @property
    def certificate(self) -> Path:
        """The self-signed certificate the daemon made (trusted by :meth:`client`)."""
        return Path(self.config["data_dir"]) / "tls" / "selfsigned-cert.pem"

    def client(self, **kwargs: Any) -> httpx.Client:
        """An httpx client for the dashboard port, trusting the daemon's certificate."""
        context = ssl.create_default_context(cafile=str(self.certificate))
        return httpx.Client(base_url=self.url, verify=context, timeout=30, **kwargs)


StartDashboard = Callable[..., DashboardDaemon]


def start_dashboard_daemon(
    start_daemon: Callable[..., Daemon], root: Path, **sections: Any
) -> DashboardDaemon:
    """Start a daemon configured by ``base_config(root, **sections)``; wait until ready."""
    ports = Ports.pick()
    config = base_config(root, ports, **sections)
    daemon = start_daemon(dump(config))
    daemon.wait_for(READY)
    return DashboardDaemon(daemon=daemon, root=root, ports=ports, config=config)


# -- the browser ----------------------------------------------------------------------------


def launch_chromium(playwright: Playwright) -> Browser:
    """Debian's Chromium, headless; fails naming the package when it is missing."""
    assert CHROMIUM.exists(), (
        f"{CHROMIUM} is missing: install Debian's Chromium (apt-get install -y chromium); "
        "never `playwright install` (downloads are blocked here)"
    )
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=list(CHROMIUM_ARGS))


def set_up_in_browser(page: Page, dashboard: DashboardDaemon, password: str = PASSWORD) -> None:
    """Open the dashboard on first run and set the admin password; ends on the Overview."""
    page.goto(dashboard.url + "/")
    assert page.url.endswith("/setup"), page.url
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_label("The same password again").fill(password)
    page.get_by_role("button", name="Set the password").click()
    page.wait_for_url(dashboard.url + "/")


def log_in_in_browser(
    page: Page, dashboard: DashboardDaemon, password: str = PASSWORD, path: str = "/"
) -> None:
    """Open ``path``, which leads to the login page, and log in; ends on ``path``."""
    page.goto(dashboard.url + path)
    assert "/login" in page.url, page.url
    page.get_by_label("Admin password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(dashboard.url + path)


# -- httpx ------------------------------------------------------------------------------------


class _Fields(html.parser.HTMLParser):
    """The hidden ``csrf_token`` input and the ``csrf-token`` meta of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.token: str | None = None

    def handle_starttag(self, tag: str, attrs_: list[tuple[str, str | None]]) -> None:
        found = dict(attrs_)
        if tag == "input" and found.get("name") == "csrf_token":
            self.token = self.token or found.get("value")
        if tag == "meta" and found.get("name") == "csrf-token":
            self.token = found.get("content")


def page_token(text: str) -> str:
    """The CSRF token a dashboard page carries (its form's, or the session's meta)."""
    fields = _Fields()
    fields.feed(text)
    assert fields.token, "the page carries no csrf_token"
    return fields.token


class AdminClient:
    """An httpx client signed in to the dashboard as the admin."""

    def __init__(self, dashboard: DashboardDaemon, password: str = PASSWORD) -> None:
        self.http = dashboard.client()
        first = self.http.get("/login")
        if first.status_code == 303 and first.headers["location"] == "/setup":
            form = self.http.get("/setup")
            answer = self.http.post(
                "/setup",
                data={"csrf_token": page_token(form.text), "password": password, "again": password},
            )
        else:
            answer = self.http.post(
                "/login", data={"csrf_token": page_token(first.text), "password": password}
            )
        assert answer.status_code == 303, (answer.status_code, answer.text[:500])
        assert answer.headers["location"] == "/", answer.headers

    def csrf_token(self, path: str = "/") -> str:
        """The session's CSRF token, read from a page as a browser script would."""
        return page_token(self.http.get(path).text)

    def post_form(self, path: str, data: Mapping[str, str] | None = None) -> httpx.Response:
        """POST a form the way the dashboard's own forms do (with the session's token)."""
        return self.http.post(path, data={"csrf_token": self.csrf_token(), **(data or {})})

    def close(self) -> None:
        self.http.close()


# -- screenshots --------------------------------------------------------------------------------


PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"


@attrs.frozen
class Screenshots:
    """Takes a page's screenshots in both colour schemes (see the module docstring)."""

    directory: Path

    @classmethod
    def for_test(cls, tmp_path: Path) -> Screenshots:
        wanted = os.environ.get("DISPATCH_SCREENSHOTS") == "docs"
        return cls(SCREENSHOT_DIR if wanted else tmp_path / "screenshots")

    def take(self, page: Page, name: str, *, full_page: bool = False) -> list[Path]:
        """``<name>-light.png`` and ``<name>-dark.png`` of ``page`` as it is now."""
        self.directory.mkdir(parents=True, exist_ok=True)
        taken = []
        for scheme in ("light", "dark"):
            page.emulate_media(color_scheme=scheme)
            path = self.directory / f"{name}-{scheme}.png"
            page.screenshot(path=str(path), full_page=full_page)
            assert path.read_bytes()[:8] == PNG_SIGNATURE, path
            taken.append(path)
        page.emulate_media(color_scheme="light")
        return taken
