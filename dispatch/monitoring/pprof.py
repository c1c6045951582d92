"""A :class:`~dispatch.monitoring.sampling.Profile` as pprof's ``profile.proto``, gzipped.

The format is github.com/google/pprof's ``proto/profile.proto`` (what ``go tool pprof``,
Pyroscope, Parca and Google Cloud Profiler read). It is written here with a few lines of
protobuf wire encoding (varints and length-delimited fields) instead of a protobuf
dependency: only five message types are needed, all of them flat. Field numbers below are
the schema's.

What is written: the string table (``""`` first, as the format requires), two sample types
(``samples``/``count`` and ``cpu``/``nanoseconds``, the second the default, as Go's own CPU
profiles), one location per (function, line) and one function per (name, file, first
line), one sample per (thread, stack) with its locations leaf first and a ``thread`` label
(``pprof -tagroot=thread`` makes threads the roots of the graph), and the period
(:data:`~dispatch.monitoring.sampling.SAMPLE_INTERVAL` of CPU), start time and duration.
No mapping: the functions are already symbolized, so no binary is involved. No
``system_name`` either: pprof "demangles" a function whose system name equals its name, and
takes a Python name in angle brackets (``<module>``, ``<lambda>``, ``<genexpr>``) for C++
template arguments, which it deletes; a function with a name alone is taken as it is.
"""

from __future__ import annotations

import gzip
from typing import Final

from dispatch.monitoring.sampling import SAMPLE_INTERVAL, Frame, Profile

CONTENT_TYPE: Final = "application/octet-stream"

# profile.proto field numbers
_PROFILE_SAMPLE_TYPE, _PROFILE_SAMPLE, _PROFILE_LOCATION, _PROFILE_FUNCTION = 1, 2, 4, 5
_PROFILE_STRING_TABLE, _PROFILE_TIME_NANOS, _PROFILE_DURATION_NANOS = 6, 9, 10
_PROFILE_PERIOD_TYPE, _PROFILE_PERIOD, _PROFILE_COMMENT, _PROFILE_DEFAULT_SAMPLE_TYPE = (
    11,
    12,
    13,
    14,
)
_VALUE_TYPE_TYPE, _VALUE_TYPE_UNIT = 1, 2
_SAMPLE_LOCATION_ID, _SAMPLE_VALUE, _SAMPLE_LABEL = 1, 2, 3
_LABEL_KEY, _LABEL_STR = 1, 2
_LOCATION_ID, _LOCATION_LINE = 1, 4
_LINE_FUNCTION_ID, _LINE_LINE = 1, 2
_FUNCTION_ID, _FUNCTION_NAME = 1, 2  # no system_name (3): see encode_pprof
_FUNCTION_FILENAME, _FUNCTION_START_LINE = 4, 5

_VARINT, _LENGTH_DELIMITED = 0, 2


def varint(value: int) -> bytes:
    """Base-128 varint; a negative int64 is sent as its 64-bit two's complement (10 bytes)."""
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class Message:
    """A protobuf message being written: fields are appended in the order they are added."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def number(self, field: int, value: int) -> Message:
        """A varint field; zero is the default and is left out, as proto3 encoders do."""
        if value:
            self._buffer += varint(field << 3 | _VARINT) + varint(value)
        return self

    def packed(self, field: int, values: list[int]) -> Message:
        """A repeated varint field, packed (proto3's encoding; readers accept both)."""
        if values:
            self.delimited(field, b"".join(varint(value) for value in values))
        return self

    def delimited(self, field: int, payload: bytes) -> Message:
        """A length-delimited field (a string, packed values or a message), always written:
        an empty element of a repeated field (the string table's first entry) counts."""
        self._buffer += varint(field << 3 | _LENGTH_DELIMITED) + varint(len(payload))
        self._buffer += payload
        return self

    def message(self, field: int, message: Message) -> Message:
        return self.delimited(field, message.encode())

    def encode(self) -> bytes:
        return bytes(self._buffer)


class _Strings:
    def __init__(self) -> None:
        self.table: list[str] = [""]  # index 0 is the empty string: the format requires it
        self._index: dict[str, int] = {"": 0}

    def __call__(self, text: str) -> int:
        index = self._index.get(text)
        if index is None:
            index = self._index[text] = len(self.table)
            self.table.append(text)
        return index


def _value_type(strings: _Strings, kind: str, unit: str) -> Message:
    return Message().number(_VALUE_TYPE_TYPE, strings(kind)).number(_VALUE_TYPE_UNIT, strings(unit))


def encode_pprof(profile: Profile) -> bytes:
    """``profile`` as a gzipped ``profile.proto`` ``Profile`` message."""
    strings = _Strings()
    out = Message()
    out.message(_PROFILE_SAMPLE_TYPE, _value_type(strings, "samples", "count"))
    out.message(_PROFILE_SAMPLE_TYPE, _value_type(strings, "cpu", "nanoseconds"))
    functions: dict[tuple[str, str, int], int] = {}
    locations: dict[tuple[int, int], int] = {}
    function_messages: list[Message] = []
    location_messages: list[Message] = []

    def location_id(frame: Frame) -> int:
        name, filename, first_line, line = frame
        function_id = functions.get((name, filename, first_line))
        if function_id is None:
            function_id = functions[(name, filename, first_line)] = len(functions) + 1
            function_messages.append(
                Message()
                .number(_FUNCTION_ID, function_id)
                .number(_FUNCTION_NAME, strings(name))
                .number(_FUNCTION_FILENAME, strings(filename))
                .number(_FUNCTION_START_LINE, first_line)
            )
        found = locations.get((function_id, line))
        if found is None:
            found = locations[(function_id, line)] = len(locations) + 1
            at = Message().number(_LINE_FUNCTION_ID, function_id).number(_LINE_LINE, line)
            location_messages.append(
                Message().number(_LOCATION_ID, found).message(_LOCATION_LINE, at)
            )
        return found

    thread_key = strings("thread")
    for (thread, stack), tally in profile.stacks.items():
        label = Message().number(_LABEL_KEY, thread_key).number(_LABEL_STR, strings(thread))
        sample = Message().packed(
            _SAMPLE_LOCATION_ID, [location_id(frame) for frame in reversed(stack)]
        )
        sample.packed(_SAMPLE_VALUE, [tally.samples, tally.cpu_ns]).message(_SAMPLE_LABEL, label)
        out.message(_PROFILE_SAMPLE, sample)
    for location in location_messages:
        out.message(_PROFILE_LOCATION, location)
    for function in function_messages:
        out.message(_PROFILE_FUNCTION, function)
    comment = strings(
        f"Dispatch CPU profile of every thread; the Trio thread ({profile.trio_thread}) "
        + ("sampled by SIGPROF" if profile.trio_by_signal else "sampled by the sampler thread")
    )
    cpu = strings("cpu")
    out.number(_PROFILE_TIME_NANOS, int(profile.started * 1e9))
    out.number(_PROFILE_DURATION_NANOS, int(profile.duration * 1e9))
    out.message(_PROFILE_PERIOD_TYPE, _value_type(strings, "cpu", "nanoseconds"))
    out.number(_PROFILE_PERIOD, int(SAMPLE_INTERVAL * 1e9))
    out.packed(_PROFILE_COMMENT, [comment])
    out.number(_PROFILE_DEFAULT_SAMPLE_TYPE, cpu)
    for text in strings.table:  # last: every index above is in it by now
        out.delimited(_PROFILE_STRING_TABLE, text.encode())
    return gzip.compress(out.encode(), mtime=0)
