"""The HTML of the ``/debug/`` pages: pure functions from monitoring state to ``str``.

No template engine: each page is a few tables. Every value that reaches the HTML goes through
:func:`html.escape` (``quote=True``), and every value in a link through
:func:`urllib.parse.quote` first — spool entries carry addresses and remote error texts, trace
events carry peer input, and a hostile peer must not be able to script the admin's browser.

Links are relative to ``/debug/`` (the index is served there, and the pages beside it), so the
pages work whatever address and port reach them (an SSH tunnel to the monitoring address too).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Final

from dispatch.monitoring.vars import ProcessInfo, format_time

_STYLE: Final = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin-bottom: 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; }
.error { color: #b00; }
"""

_ERROR_CLASS: Final = ' class="error"'

DEBUG_LINKS: Final = (
    ("config", "effective configuration (secrets redacted) and the command line"),
    ("flags", "every command-line flag: the value in use, as given, its default"),
    ("vars", "exported variables (JSON)"),
    ("traces", "traces of SMTP sessions, deliveries, API requests and health checks"),
    ("queue", "every message, each recipient's state, last reply, relay and route"),
    ("queue?format=text", "the same for a terminal (curl)"),
    ("tasks", "the live Trio task tree with stacks"),
    ("threads", "every OS thread with its Python stack, then the Trio task tree"),
    ("profile?seconds=10", "CPU profile of 10 seconds"),
    ("memory", "top allocations (traces memory for 5 minutes)"),
    ("webhooks", "recent delivery webhook calls (status, error, attempt) and the calls owed"),
    ("/metrics", "Prometheus metrics"),
)


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head>\n"
        f'<body><p><a href="./">/debug/</a></p><h1>{_e(title)}</h1>\n{body}\n</body></html>\n'
    )


def _duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 120:
        return f"{seconds:.2f} s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    return (f"{days}d " if days else "") + f"{hours}h{minutes:02}m{secs:02}s"


def _bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def index_page(info: ProcessInfo, *, trace_memory_bytes: int, base: str = "") -> str:
    """``/debug/``: what is running where since when, and links to every other page.

    ``base`` is put before each relative link: ``"debug/"`` when the index is served at
    ``/`` or ``/debug`` (without the slash), so the links still lead under ``/debug/``."""
    facts = (
        ("version", info.version),
        ("python", info.python),
        ("build date", format_time(info.source_date)),
        ("started", format_time(info.started_at)),
        ("uptime", _duration(info.uptime())),
        ("host", info.hostname),
        ("traces memory (estimate)", _bytes(trace_memory_bytes)),
    )
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in facts)
    links = "".join(
        f'<li><a href="{_e(href if href.startswith("/") else base + href)}">'
        f"{_e(href)}</a> — {_e(text)}</li>"
        for href, text in DEBUG_LINKS
    )
    return _page("Dispatch debug", f"<table>{rows}</table>\n<ul>{links}</ul>")


def config_page(redacted_toml: str, flags: Sequence[str]) -> str:
    """``/debug/config``: the effective configuration (already redacted) and the flags."""
    flag_text = "\n".join(flags) if flags else "(none)"
    return _page(
        "Configuration",
        f"<h2>Command-line flags</h2><pre>{_e(flag_text)}</pre>\n"
        f"<h2>Effective configuration (secrets redacted)</h2><pre>{_e(redacted_toml)}</pre>",
    )


def tasks_page(text: str) -> str:
    """``/debug/tasks``: the text of :func:`~dispatch.monitoring.tasks.task_tree_text`."""
    return _page("Trio tasks", f"<pre>{_e(text)}</pre>")


def threads_page(text: str) -> str:
    """``/debug/threads``: the text of :func:`~dispatch.monitoring.threads.threads_text`."""
    return _page("Threads", f"<pre>{_e(text)}</pre>")


def profile_error_page(text: str) -> str:
    """``/debug/profile`` when no profile is taken: what was wrong and what to do."""
    return _page("CPU profile", f"<p{_ERROR_CLASS}>{_e(text)}</p>")


def memory_page(text: str) -> str:
    """``/debug/memory``: the text of :func:`~dispatch.monitoring.profiling.memory_top`."""
    return _page("Memory: top allocations", f"<pre>{_e(text)}</pre>")
