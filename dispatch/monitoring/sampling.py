"""Sampling every thread's Python stack for ``/debug/profile``, weighted by CPU time.

Each sample is one thread's stack, weighted by the CPU time that thread used since its
previous sample (read from the thread's own CPU clock), so a thread's samples add up to the
CPU it burnt during the profile, and a thread that waits (a parked ``trio.to_thread`` worker,
a blocked ``recv``) records nothing.

Two mechanisms, because one cannot see both kinds of thread fairly:

* **The Trio thread**, when it is the main thread (as under ``python -m dispatch``): an
  ``ITIMER_PROF`` timer sends ``SIGPROF`` for every :data:`SAMPLE_INTERVAL` of process CPU
  time, and the Python handler runs on that thread between two bytecodes, so it records
  whatever task was computing. A sampler thread reads the Trio thread's frame only when it
  holds the GIL, and it mostly gets the GIL when the Trio thread releases it for I/O: measured
  here, a function that took 37 % of the Trio thread's CPU, in 0.1 ms slices between socket
  sends, got none of about 600 samples from a sampler thread; every sample fell in the sends
  and ``epoll``.
* **Every other thread** (``trio.to_thread`` workers doing spool fsyncs, SQLite commits, TLS
  handshakes, password hashes; any thread a library starts): a sampler thread that wakes
  every :data:`THREAD_SAMPLE_INTERVAL` reads :func:`sys._current_frames`. Such threads spend
  their CPU in C calls that release the GIL (SQLite, hashing, ``fsync``), which is where the
  sampler finds them. When Trio does not run on the main thread (signal handlers only run
  there), the sampler thread samples the Trio thread as well, and :attr:`Profile.trio_by_signal`
  says so.

A thread sampled by the sampler thread is charged its CPU since its previous sample on the
stack it is found in. So a job shorter than the interval that starts and ends between two
samples (a ``trio.to_thread`` call for a spool write or a log insert) is charged to where its
worker thread waits for the next one (Trio's ``WorkerThread._work``); a job that ends after
one sample and before the next is charged to the stack it was sampled in (Trio renames a
worker thread for each job, which tells the two apart).

Both stop after the duration the caller chose (bounded by ``/debug/profile``); the stored
stacks are bounded by :data:`MAX_STACKS` (further distinct stacks are counted under one
"not kept" entry, so per-thread totals stay right). A thread is named by its name when it was
sampled: Trio names a worker thread ``"<function> from <task>"`` while it runs a job.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from types import FrameType
from typing import Any, Final

import attrs

SAMPLE_INTERVAL: Final = 0.005
"""Seconds of process CPU between two samples of the Trio thread (``ITIMER_PROF``)."""

THREAD_SAMPLE_INTERVAL: Final = 0.01
"""Seconds between two passes of the sampler thread over the other threads: 100 a second
ranks functions well enough; each pass takes the GIL from the Trio thread once."""

MAX_DEPTH: Final = 80  # frames kept per sample, innermost first
MAX_STACKS: Final = 20_000  # distinct (thread, stack) pairs kept per profile
MAX_THREADS: Final = 1_000  # thread names kept once MAX_STACKS is reached; then one for all
OTHER_THREADS: Final = "(other threads)"

Frame = tuple[str, str, int, int]
"""Function (qualified name), file, the function's first line, the line executing."""
Stack = tuple[Frame, ...]  # outermost first
NOT_KEPT: Final[Stack] = (("(stacks not kept: limit reached)", "", 0, 0),)


@attrs.define
class Tally:
    """The samples taken of one stack in one thread and the CPU time they stand for."""

    samples: int = 0
    cpu_ns: int = 0


@attrs.frozen
class Profile:
    """What a :class:`ThreadSampler` recorded, keyed by (thread name, stack)."""

    started: float  # wall clock, seconds since the epoch
    duration: float  # seconds
    stacks: dict[tuple[str, Stack], Tally]
    trio_thread: str  # the name of the thread that ran Trio (and asked for the profile)
    trio_by_signal: bool  # the Trio thread was sampled by SIGPROF, not by the sampler thread
    sampler_cpu_ns: int  # CPU the sampler thread itself used: the profile's own cost

    def threads(self) -> list[tuple[str, Tally]]:
        """Per thread name: all its samples and CPU, the busiest first."""
        totals: dict[str, Tally] = {}
        for (thread, _), tally in self.stacks.items():
            total = totals.setdefault(thread, Tally())
            total.samples += tally.samples
            total.cpu_ns += tally.cpu_ns
        return sorted(totals.items(), key=lambda item: (-item[1].cpu_ns, item[0]))

    @property
    def total_cpu_ns(self) -> int:
        return sum(tally.cpu_ns for tally in self.stacks.values())


def stack_of(frame: FrameType | None) -> Stack:
    """The stack from ``frame`` outwards, outermost first, at most :data:`MAX_DEPTH` deep."""
    frames: list[Frame] = []
    while frame is not None and len(frames) < MAX_DEPTH:
        code = frame.f_code
        line = frame.f_lineno or code.co_firstlineno
        frames.append((code.co_qualname, code.co_filename, code.co_firstlineno, line))
        frame = frame.f_back
    frames.reverse()
    return tuple(frames)


def thread_cpu_ns(ident: int, native_id: int | None) -> int | None:
    """CPU time used so far by a thread of this process, or None if it has ended.

    On Linux the thread's CPU clock is named from its kernel id, which the kernel rejects
    (``EINVAL``) once the thread is gone; a ``pthread_t`` of a thread that just ended must not
    be handed to ``pthread_getcpuclockid``. Elsewhere that is the only way.
    """
    try:
        if sys.platform == "linux" and native_id is not None:
            # MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED), as glibc's pthread_getcpuclockid.
            return time.clock_gettime_ns((~native_id << 3) | 6)
        return time.clock_gettime_ns(time.pthread_getcpuclockid(ident))
    except OSError:
        return None


class _Store:
    """One writer's stacks (the signal handler and the sampler thread each own one)."""

    def __init__(self) -> None:
        self.stacks: dict[tuple[str, Stack], Tally] = {}

    def add(self, thread: str, stack: Stack, cpu_ns: int, room: int) -> None:
        tally = self.stacks.get((thread, stack))
        if tally is None:
            if room <= len(self.stacks):
                stack = NOT_KEPT
                if (thread, NOT_KEPT) not in self.stacks and room + MAX_THREADS <= len(self.stacks):
                    thread = OTHER_THREADS
            tally = self.stacks.setdefault((thread, stack), Tally())
        tally.samples += 1
        tally.cpu_ns += cpu_ns


class ThreadSampler:
    """Owns, while running, the sampler thread and (Trio on the main thread) the ``SIGPROF``
    handler and timer; :meth:`stop` ends both, restores the previous handler and returns the
    :class:`Profile`. Start and stop it on the Trio thread; it is not restartable."""

    def __init__(
        self, interval: float = THREAD_SAMPLE_INTERVAL, max_stacks: int = MAX_STACKS
    ) -> None:
        self._interval = interval
        self._max_stacks = max_stacks
        self._signal_store = _Store()
        self._thread_store = _Store()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dispatch profiler", daemon=True)
        self._baseline: dict[int, int] = {}  # thread key -> CPU ns at its previous sample
        self._last: dict[int, tuple[str, Stack]] = {}  # key -> name, stack if it used CPU
        self._names: dict[int, str] = {}  # thread key -> its name at its previous sample
        self._trio_ident = threading.get_ident()
        self._trio_name = threading.current_thread().name
        self._by_signal = threading.current_thread() is threading.main_thread()
        self._trio_cpu = 0
        self._previous_handler: Any = None
        self._started = 0.0
        self._started_clock = 0.0
        self._sampler_cpu_ns = 0

    def start(self) -> None:
        self._started = time.time()
        self._started_clock = time.monotonic()
        for thread in threading.enumerate():  # CPU used before the profile is not counted
            if thread.ident is not None:
                key = _key(thread.ident, thread.native_id)
                cpu = thread_cpu_ns(thread.ident, thread.native_id)
                if cpu is not None:
                    self._baseline[key] = cpu
                self._names[key] = thread.name
        if self._by_signal:
            self._trio_cpu = time.thread_time_ns()
            self._previous_handler = signal.signal(signal.SIGPROF, self._on_sigprof)
            signal.setitimer(signal.ITIMER_PROF, SAMPLE_INTERVAL, SAMPLE_INTERVAL)
        self._thread.start()

    def stop(self) -> Profile:
        if self._by_signal:
            signal.setitimer(signal.ITIMER_PROF, 0, 0)
            signal.signal(signal.SIGPROF, self._previous_handler)
        self._stopping.set()
        self._thread.join()  # it wakes within one interval
        duration = time.monotonic() - self._started_clock
        stacks = dict(self._thread_store.stacks)
        for key, tally in self._signal_store.stacks.items():
            merged = stacks.setdefault(key, Tally())
            merged.samples += tally.samples
            merged.cpu_ns += tally.cpu_ns
        return Profile(
            started=self._started,
            duration=duration,
            stacks=stacks,
            trio_thread=self._trio_name,
            trio_by_signal=self._by_signal,
            sampler_cpu_ns=self._sampler_cpu_ns,
        )

    def _on_sigprof(self, signum: int, frame: FrameType | None) -> None:
        now = time.thread_time_ns()
        spent, self._trio_cpu = now - self._trio_cpu, now
        if spent > 0:
            self._signal_store.add(self._trio_name, stack_of(frame), spent, self._max_stacks // 2)

    def _run(self) -> None:
        me = threading.get_ident()
        begun = time.thread_time_ns()
        while not self._stopping.wait(self._interval):
            self._sample_threads(me)
        self._sampler_cpu_ns = time.thread_time_ns() - begun

    def _sample_threads(self, me: int) -> None:
        frames = sys._current_frames()
        threads = {thread.ident: thread for thread in threading.enumerate()}
        renamed: list[tuple[str, Stack, int, int, int | None, tuple[str, Stack] | None]] = []
        for ident, frame in frames.items():
            if ident == me or (self._by_signal and ident == self._trio_ident):
                continue
            thread = threads.get(ident)
            native_id = thread.native_id if thread is not None else None
            cpu = thread_cpu_ns(ident, native_id)
            if cpu is None:
                continue
            key = _key(ident, native_id)
            spent = cpu - self._baseline.get(key, 0)  # a thread born since then: all its CPU
            self._baseline[key] = cpu
            name = thread.name if thread is not None else f"thread {ident:#x}"
            previous = self._last.pop(key, None)  # its name and stack last time, if it used CPU
            former_name = self._names.get(key, name)
            self._names[key] = name
            if spent <= 0:
                continue
            stack = stack_of(frame)
            self._last[key] = (name, stack)
            if former_name == name:
                self._thread_store.add(name, stack, spent, self._max_stacks // 2)
            else:
                renamed.append((name, stack, spent, ident, native_id, previous))
        for entry in renamed:
            self._charge_renamed(*entry)

    def _charge_renamed(
        self,
        name: str,
        stack: Stack,
        spent: int,
        ident: int,
        native_id: int | None,
        previous: tuple[str, Stack] | None,
    ) -> None:
        """A thread renamed since its previous sample: Trio names a worker thread
        ``"<function> from <task>"`` for each job and gives its name back after.

        If its clock runs while this pass does, it computes where it is now. Otherwise it
        waits: either it finished the job it was sampled in last time and is parked, or it
        started a job and waits in it (for the disk, say); the CPU goes to the deeper of the
        two stacks, a worker's parking place being its shallowest.
        """
        now = thread_cpu_ns(ident, native_id)
        computing = now is not None and now > self._baseline[_key(ident, native_id)]
        if not computing and previous is not None and len(previous[1]) > len(stack):
            self._thread_store.add(*previous, spent, self._max_stacks // 2)
        else:
            self._thread_store.add(name, stack, spent, self._max_stacks // 2)


def _key(ident: int, native_id: int | None) -> int:
    """Baselines are kept per kernel thread id: a ``pthread_t`` is reused by later threads."""
    return native_id if native_id is not None else ident
