"""``/debug/profile`` and ``/debug/threads`` on the monitoring server of a running Dispatch,
while real SMTP clients send mail: the spool's commits and the message log's writes run in
worker threads, and the profile must show them there."""

from __future__ import annotations

import gzip
import threading
from pathlib import Path

import httpx
import trio

from tests.conftest import free_port
from tests.delivery.harness import Running, running_dispatch
from tests.monitoring.pprof_schema import parse_profile
from tests.support.config import base_config

MESSAGE = b"From: a@x.test\r\nSubject: profile\r\n\r\n" + b"a line of the body\r\n" * 100
WORKER_ROOMS = ("/dispatch/spool/", "/dispatch/storage/")
ATTEMPTS = 5  # profiles taken at most until one has caught a commit in a worker thread


async def send_forever(dispatch: Running) -> None:
    while True:
        await dispatch.submit("a@x.test", ["b@y.test"], MESSAGE)


def worker_thread_frames(body: bytes) -> set[tuple[str, str]]:
    """(thread, function) of every Dispatch spool or storage frame outside the Trio thread."""
    raw = parse_profile(gzip.decompress(body))
    text = list(raw.string_table)
    functions = {function.id: function for function in raw.function}
    locations = {location.id: location for location in raw.location}
    found = set()
    for sample in raw.sample:
        thread = next(text[label.str] for label in sample.label if text[label.key] == "thread")
        if thread == threading.main_thread().name:  # the Trio thread here
            continue
        for location_id in sample.location_id:
            for line in locations[location_id].line:
                function = functions[line.function_id]
                if any(room in text[function.filename] for room in WORKER_ROOMS):
                    found.add((thread, text[function.name]))
    return found


async def test_a_profile_under_smtp_load_shows_commits_in_worker_threads(tmp_path: Path) -> None:
    port = free_port()
    config = base_config(tmp_path, monitoring={"address": f"127.0.0.1:{port}"})
    async with (
        running_dispatch(tmp_path, config) as dispatch,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client,
        trio.open_nursery() as senders,
    ):
        for _ in range(3):
            senders.start_soon(send_forever, dispatch)
        profiles = []
        for _ in range(ATTEMPTS):
            response = await client.get("/debug/profile?seconds=1&format=pprof")
            profiles.append(response)
            if worker_thread_frames(response.content):
                break
        html = await client.get("/debug/profile?seconds=1")
        senders.cancel_scope.cancel()
    last = profiles[-1]
    assert last.status_code == 200
    assert last.headers["content-type"] == "application/octet-stream"
    assert 'filename="profile.pb.gz"' in last.headers["content-disposition"]
    assert worker_thread_frames(last.content)
    assert "<h2>Threads</h2>" in html.text
    assert f"<td>{threading.main_thread().name}</td>" in html.text


async def test_threads_page_lists_the_main_thread_and_a_named_worker(tmp_path: Path) -> None:
    port = free_port()
    config = base_config(tmp_path, monitoring={"address": f"127.0.0.1:{port}"})
    stop = threading.Event()
    worker = threading.Thread(target=stop.wait, name="named worker", daemon=True)
    async with (
        running_dispatch(tmp_path, config),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client,
    ):
        worker.start()
        try:
            text = await client.get("/debug/threads?format=text")
            page = await client.get("/debug/threads")
            index = await client.get("/debug/")
        finally:
            stop.set()
            worker.join(timeout=10)
    assert text.headers["content-type"].startswith("text/plain")
    assert '"MainThread"' in text.text
    assert f'thread {worker.native_id} "named worker"' in text.text
    assert "| Event.wait (threading.py:" in text.text
    assert "delivery worker" in text.text.split("Trio task tree", 1)[1]
    assert page.headers["content-type"].startswith("text/html")
    assert "&quot;named worker&quot;" in page.text
    assert 'href="threads"' in index.text


async def test_profile_refuses_unknown_formats_and_bad_seconds(tmp_path: Path) -> None:
    port = free_port()
    config = base_config(tmp_path, monitoring={"address": f"127.0.0.1:{port}"})
    async with (
        running_dispatch(tmp_path, config),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client,
    ):
        bad_format = await client.get("/debug/profile?format=flamegraph")
        bad_seconds = await client.get("/debug/profile?seconds=soon")
    assert bad_format.status_code == 400
    assert "format must be one of html, speedscope, pprof" in bad_format.text
    assert bad_seconds.status_code == 400
    assert "seconds must be a number" in bad_seconds.text
