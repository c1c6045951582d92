"""``/debug/profile`` over every thread and its pprof form, read by real readers: the
protobuf library with pprof's schema, and ``go tool pprof`` where Go is installed."""

from __future__ import annotations

import gzip
import json
import random
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

from dispatch.monitoring.pprof import Message, encode_pprof
from dispatch.monitoring.profiling import cpu_profile
from dispatch.monitoring.sampling import NOT_KEPT, Profile, ThreadSampler
from tests.monitoring.pprof_schema import message_class, parse_profile


def _worker_marker_for_profile() -> int:
    spins = 0
    end = time.perf_counter() + 0.002
    while time.perf_counter() < end:
        spins += 1
    return spins


@contextmanager
def thread_running(target: Callable[[threading.Event], None], name: str) -> Iterator[None]:
    """A named thread running ``target(stop)`` for the duration of the block."""
    stop = threading.Event()
    thread = threading.Thread(target=target, args=(stop,), name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)


def burn_cpu(stop: threading.Event) -> None:
    while not stop.is_set():
        _worker_marker_for_profile()


def _recurse(depth: int) -> None:
    if depth:
        _recurse(depth - 1)
    else:
        _worker_marker_for_profile()


def many_stacks(stop: threading.Event) -> None:
    while not stop.is_set():
        _recurse(random.randrange(40))


@attrs.frozen
class Decoded:
    """A parsed pprof profile with its string indices resolved."""

    raw: Any
    strings: list[str]

    def text(self, index: int) -> str:
        return self.strings[index]

    def functions(self) -> dict[int, Any]:
        return {function.id: function for function in self.raw.function}

    def samples_of(self, thread: str) -> list[Any]:
        return [
            sample
            for sample in self.raw.sample
            if any(
                self.text(label.key) == "thread" and self.text(label.str) == thread
                for label in sample.label
            )
        ]

    def stack_names(self, sample: Any) -> list[str]:
        """Function names of a sample, leaf first (as pprof stores them)."""
        locations = {location.id: location for location in self.raw.location}
        functions = self.functions()
        return [
            self.text(functions[line.function_id].name)
            for location_id in sample.location_id
            for line in locations[location_id].line
        ]


def decode(body: bytes) -> Decoded:
    raw = parse_profile(gzip.decompress(body))
    return Decoded(raw, list(raw.string_table))


async def profile_while(target: Callable[[threading.Event], None], name: str) -> bytes:
    with thread_running(target, name):
        body, content_type = await cpu_profile(1, "pprof")
    assert content_type == "application/octet-stream"
    return body


async def test_a_worker_threads_cpu_is_charged_to_that_thread_with_its_frames() -> None:
    with thread_running(burn_cpu, "cpu worker"):
        body, _ = await cpu_profile(1, "speedscope")
    document = json.loads(body)
    frames = document["shared"]["frames"]
    by_thread = {profile["name"]: profile for profile in document["profiles"]}
    worker = by_thread["cpu worker"]
    names = {frames[index]["name"] for stack in worker["samples"] for index in stack}
    assert "_worker_marker_for_profile" in names
    assert sum(worker["weights"]) > 0  # seconds of the worker's own CPU


async def test_a_waiting_thread_records_nothing() -> None:
    def wait(stop: threading.Event) -> None:
        stop.wait()

    sampler = ThreadSampler()
    with thread_running(wait, "idle waiter"), thread_running(burn_cpu, "cpu worker"):
        sampler.start()
        await trio.sleep(0.5)
        profile = sampler.stop()
    threads = dict(profile.threads())
    assert "cpu worker" in threads
    assert "idle waiter" not in threads


async def test_stored_stacks_are_bounded_and_the_rest_still_counted() -> None:
    sampler = ThreadSampler(max_stacks=8)
    with thread_running(many_stacks, "deep worker"):
        sampler.start()
        await trio.sleep(1)
        profile = sampler.stop()
    worker_stacks = [stack for (thread, stack) in profile.stacks if thread == "deep worker"]
    assert len(worker_stacks) <= 8 // 2 + 1  # the sampler thread's half of the room, NOT_KEPT
    assert NOT_KEPT in worker_stacks
    assert profile.stacks[("deep worker", NOT_KEPT)].cpu_ns > 0


async def test_pprof_is_a_consistent_profile_proto() -> None:
    started = time.time()
    decoded = decode(await profile_while(burn_cpu, "cpu worker"))
    raw, text = decoded.raw, decoded.text
    assert decoded.strings[0] == ""
    types = [(text(kind.type), text(kind.unit)) for kind in raw.sample_type]
    assert types == [("samples", "count"), ("cpu", "nanoseconds")]
    assert text(raw.default_sample_type) == "cpu"
    assert (text(raw.period_type.type), text(raw.period_type.unit)) == ("cpu", "nanoseconds")
    assert raw.period > 0
    assert 0.9e9 <= raw.duration_nanos <= 30e9
    assert started - 60 <= raw.time_nanos / 1e9 <= time.time()
    assert "every thread" in text(raw.comment[0])
    location_ids = [location.id for location in raw.location]
    function_ids = [function.id for function in raw.function]
    assert 0 not in location_ids
    assert len(set(location_ids)) == len(location_ids)
    assert 0 not in function_ids
    assert len(set(function_ids)) == len(function_ids)
    assert all(
        line.function_id in function_ids for location in raw.location for line in location.line
    )
    assert all(set(sample.location_id) <= set(location_ids) for sample in raw.sample)
    assert all(len(sample.value) == 2 and min(sample.value) > 0 for sample in raw.sample)
    indices = [function.name for function in raw.function]
    indices += [function.filename for function in raw.function]
    indices += [label.str for sample in raw.sample for label in sample.label]
    assert all(0 <= index < len(decoded.strings) for index in indices)


async def test_pprof_carries_the_worker_threads_function_at_the_leaf() -> None:
    decoded = decode(await profile_while(burn_cpu, "cpu worker"))
    functions = decoded.functions()
    marker = [f for f in functions.values() if decoded.text(f.name) == "_worker_marker_for_profile"]
    assert len(marker) == 1
    assert decoded.text(marker[0].filename) == __file__
    assert marker[0].start_line == _worker_marker_for_profile.__code__.co_firstlineno
    leaves = [decoded.stack_names(sample)[0] for sample in decoded.samples_of("cpu worker")]
    assert "_worker_marker_for_profile" in leaves
    roots = {decoded.stack_names(sample)[-1] for sample in decoded.samples_of("cpu worker")}
    assert roots == {"Thread._bootstrap"}  # outermost last: the thread's own start


def test_negative_and_large_numbers_survive_the_hand_written_encoding() -> None:
    value_type = message_class("ValueType")()
    value_type.ParseFromString(Message().number(1, -1).number(2, 2**62 + 5).encode())
    assert (value_type.type, value_type.unit) == (-1, 2**62 + 5)


def test_an_empty_profile_is_still_a_valid_message() -> None:
    profile = Profile(
        started=0.0,
        duration=1.0,
        stacks={},
        trio_thread="MainThread",
        trio_by_signal=True,
        sampler_cpu_ns=0,
    )
    raw = parse_profile(gzip.decompress(encode_pprof(profile)))
    assert raw.string_table[0] == ""
    assert len(raw.sample) == 0
    assert len(raw.sample_type) == 2


async def test_go_tool_pprof_reads_it(tmp_path: Path) -> None:
    assert shutil.which("go"), "go tool pprof needs Go: apt-get install golang-go (.ci/run does)"
    path = tmp_path / "profile.pb.gz"
    path.write_bytes(await profile_while(burn_cpu, "cpu worker"))
    tags = await trio.run_process(
        ["go", "tool", "pprof", "-tags", str(path)], capture_stdout=True, capture_stderr=True
    )
    traces = await trio.run_process(
        ["go", "tool", "pprof", "-traces", str(path)], capture_stdout=True, capture_stderr=True
    )
    top = await trio.run_process(
        ["go", "tool", "pprof", "-top", "-tagfocus=thread=cpu worker", str(path)],
        capture_stdout=True,
        capture_stderr=True,
    )
    assert "cpu worker" in tags.stdout.decode()
    assert "_worker_marker_for_profile" in traces.stdout.decode()
    assert "Type: cpu" in top.stdout.decode()
    assert "_worker_marker_for_profile" in top.stdout.decode()
