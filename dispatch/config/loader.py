"""Read the TOML configuration into :class:`~dispatch.config.settings.Settings`.

Theory of operation: ``tomllib`` parses the file; a cattrs converter with detailed validation
structures it into the frozen settings classes, collecting *every* problem instead of stopping
at the first; strict hooks refuse silent coercions (``"25"`` is not a port) and give each
value type its own message. The collected exception tree is flattened into
:class:`ConfigProblem` lines (``listener.ports[1]: 70000 is not a port (1-65535)``); checks
that span several keys (a route naming a missing relay) run afterwards on the typed result.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import tomllib
import typing
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final

import attrs
import cattrs
from cattrs.errors import (
    AttributeValidationNote,
    ForbiddenExtraKeysError,
    IterableValidationNote,
)
from cattrs.gen import make_dict_structure_fn

from dispatch.config import toml_errors
from dispatch.config.cross_checks import cross_checks
from dispatch.config.problems import ConfigError as ConfigError
from dispatch.config.problems import ConfigProblem as ConfigProblem
from dispatch.config.settings import (
    RELAY_KINDS,
    SECRET,
    RelaySettings,
    Settings,
)
from dispatch.config.types import (
    BindAddresses,
    Cidr,
    HostPort,
    NonNegativeInt,
    Port,
    PositiveFloat,
    PositiveInt,
    ProcessCount,
    RelayChoice,
    Secret,
    auto_processes,
)

CONFIG_ENV: Final = "DISPATCH_CONFIG"
DEFAULT_CONFIG_FILE: Final = "dispatch.toml"


class _KeyProblem(ValueError):
    """Raised by hooks for a problem under a named key of the table being structured."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


# --- strict value hooks --------------------------------------------------------------------


def _type_name(value: object) -> str:
    return {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "array",
        dict: "table",
    }.get(type(value), type(value).__name__)


def _expect(value: object, kinds: tuple[type, ...], wanted: str) -> None:
    # bool is an int in Python but never a number in a config file.
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        raise TypeError(f"expected {wanted}, got {_type_name(value)} {value!r}")


def _str(value: object, _: object) -> str:
    _expect(value, (str,), "a string")
    return typing.cast(str, value)


def _bool(value: object, _: object) -> bool:
    _expect(value, (bool,), "true or false")
    return typing.cast(bool, value)


def _int(value: object, _: object) -> int:
    _expect(value, (int,), "an integer")
    return typing.cast(int, value)


def _float(value: object, _: object) -> float:
    _expect(value, (int, float), "a number")
    return float(typing.cast(float, value))


def _port(value: object, _: object) -> Port:
    port = _int(value, None)
    if not 1 <= port <= 65535:
        raise ValueError(f"{port} is not a port (1-65535)")
    return Port(port)


def _non_negative_int(value: object, _: object) -> NonNegativeInt:
    number = _int(value, None)
    if number < 0:
        raise ValueError(f"{number} is negative; use 0 or more")
    return NonNegativeInt(number)


def _positive_int(value: object, _: object) -> PositiveInt:
    number = _int(value, None)
    if number < 1:
        raise ValueError(f"{number} is too small; use 1 or more")
    return PositiveInt(number)


def _process_count(value: object, _: object) -> ProcessCount:
    if value == "auto":
        return auto_processes()
    if not isinstance(value, int) or isinstance(value, bool):
        wanted = 'a number of processes or "auto"'
        raise TypeError(f"expected {wanted}, got {_type_name(value)} {value!r}")
    return ProcessCount(_positive_int(value, None))


def _positive_float(value: object, _: object) -> PositiveFloat:
    number = _float(value, None)
    if number <= 0:
        raise ValueError(f"{number:g} must be greater than 0")
    return PositiveFloat(number)


def _cidr(value: object, _: object) -> Cidr:
    text = _str(value, None)
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a network in CIDR notation (e.g. '192.168.0.0/16' or '::1/128')"
        ) from None
    return Cidr(text)


def _ip_address(text: str) -> str:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is not an IP address (e.g. '0.0.0.0', '::', '127.0.0.1')"
        ) from None
    return text


def _bind_addresses(value: object, _: object) -> BindAddresses:
    if isinstance(value, str):
        return BindAddresses((_ip_address(value),))
    _expect(value, (list,), "an IP address or a list of them")
    items = typing.cast(list[object], value)
    if not items:
        raise ValueError("is empty; name at least one address to listen on")
    return BindAddresses(tuple(_ip_address(_str(item, None)) for item in items))


def _relay_choice(value: object, _: object) -> RelayChoice:
    if isinstance(value, str):
        return RelayChoice((value,))
    _expect(value, (list,), "a relay name or a list of relay names")
    names = tuple(_str(item, None) for item in typing.cast(list[object], value))
    if not names:
        raise ValueError("is empty; name at least one relay")
    return RelayChoice(names)


def _host_port(value: object, _: object) -> HostPort:
    text = _str(value, None)
    if text == "":
        return HostPort(text)
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not 'host:port' (e.g. '127.0.0.1:1099'); '' turns it off")
    return HostPort(text)


def _secret(value: object, _: object) -> Secret:
    return Secret(_str(value, None))


def _is_literal(kind: Any) -> bool:
    origin: object = typing.get_origin(kind)
    return origin is typing.Literal


def _literal(value: object, literal: Any) -> Any:
    choices = typing.get_args(literal)
    if value not in choices or type(value) is not type(choices[0]):
        raise ValueError(f"{value!r} is not one of: {', '.join(map(str, choices))}")
    return value


# --- secrets: <key>, <key>_env or <key>_file -----------------------------------------------


def _secret_fields(cls: type) -> list[str]:
    return [f.name for f in attrs.fields(cls) if f.metadata.get(SECRET)]


def _resolve_secrets(
    data: Mapping[str, Any], names: list[str]
) -> tuple[dict[str, Any], list[Exception]]:
    """Replace ``<name>_env`` / ``<name>_file`` by ``<name>``, collecting problems."""
    resolved = dict(data)
    problems: list[Exception] = []
    for name in names:
        given = [k for k in (name, f"{name}_env", f"{name}_file") if k in resolved]
        if len(given) > 1:
            problems.append(_KeyProblem(given[-1], f"set only one of {', '.join(given)}"))
            for key in given:
                resolved.pop(key)
            continue
        if f"{name}_env" in resolved:
            variable = resolved.pop(f"{name}_env")
            if not isinstance(variable, str) or not variable:
                problems.append(_KeyProblem(f"{name}_env", "expected an environment variable name"))
            elif (value := os.environ.get(variable)) is None:
                problems.append(
                    _KeyProblem(
                        f"{name}_env",
                        f"environment variable {variable} is not set; export it, or use "
                        f"{name} / {name}_file instead",
                    )
                )
            else:
                resolved[name] = value
        elif f"{name}_file" in resolved:
            path = resolved.pop(f"{name}_file")
            if not isinstance(path, str) or not path:
                problems.append(_KeyProblem(f"{name}_file", "expected a file path"))
                continue
            try:
                resolved[name] = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                problems.append(
                    _KeyProblem(
                        f"{name}_file",
                        f"cannot read {path}: {reason}; check the path and its permissions",
                    )
                )
    return resolved, problems


def _tables(converter: cattrs.Converter) -> Callable[[type], Callable[[Any, type], Any]]:
    """Structure hooks for settings classes: a TOML table, with secret keys resolved."""

    def factory(cls: type) -> Callable[[Any, type], Any]:
        base: Callable[[Mapping[str, Any], Any], Any] = make_dict_structure_fn(cls, converter)
        names = _secret_fields(cls)

        def structure(value: Any, _: type) -> Any:
            _expect(value, (dict,), "a table")
            data, problems = _resolve_secrets(value, names)
            try:
                result = base(data, cls)
            except ExceptionGroup as group:
                problems.extend(group.exceptions)
            except (TypeError, ValueError, KeyError) as exc:
                problems.append(exc)
            if problems:
                raise ExceptionGroup(f"While structuring {cls.__name__}", problems)
            return result

        return structure

    return factory


def _relay(converter: cattrs.Converter) -> Callable[[Any, Any], RelaySettings]:
    def structure(value: Any, _: Any) -> RelaySettings:
        _expect(value, (dict,), "a table")
        kind = value.get("kind")
        kinds = ", ".join(RELAY_KINDS)
        if kind is None:
            raise _KeyProblem("kind", f"required; one of: {kinds}")
        if kind not in RELAY_KINDS:
            raise _KeyProblem("kind", f"{kind!r} is not a relay kind; use one of: {kinds}")
        return converter.structure(value, RELAY_KINDS[kind])

    return structure


def make_converter() -> cattrs.Converter:
    """The converter that structures raw TOML into settings, strictly."""
    converter = cattrs.Converter(detailed_validation=True, forbid_extra_keys=True)
    for kind, hook in (
        (str, _str),
        (bool, _bool),
        (int, _int),
        (float, _float),
        (Port, _port),
        (NonNegativeInt, _non_negative_int),
        (PositiveInt, _positive_int),
        (ProcessCount, _process_count),
        (PositiveFloat, _positive_float),
        (Cidr, _cidr),
        (BindAddresses, _bind_addresses),
        (RelayChoice, _relay_choice),
        (HostPort, _host_port),
        (Secret, _secret),
    ):
        converter.register_structure_hook(kind, hook)
    converter.register_structure_hook_func(_is_literal, _literal)
    converter.register_structure_hook_factory(attrs.has, _tables(converter))
    converter.register_structure_hook(RelaySettings, _relay(converter))
    return converter


_CONVERTER: Final = make_converter()

# --- error flattening ------------------------------------------------------------------------


def _child_path(path: str, exc: BaseException) -> str:
    for note in getattr(exc, "__notes__", ()):
        if isinstance(note, AttributeValidationNote):
            return f"{path}.{note.name}" if path else note.name
        if isinstance(note, IterableValidationNote):
            return f"{path}[{note.index}]"
    return path


def _flatten(exc: BaseException, path: str) -> Iterator[ConfigProblem]:
    if isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            yield from _flatten(sub, _child_path(path, sub))
    elif isinstance(exc, ForbiddenExtraKeysError):
        known = [f.name for f in attrs.fields(exc.cl)]
        for key in sorted(exc.extra_fields):
            hint = difflib.get_close_matches(key, known, n=1)
            advice = f"did you mean {hint[0]!r}?" if hint else f"known keys: {', '.join(known)}"
            yield ConfigProblem(f"{path}.{key}" if path else key, f"unknown key; {advice}")
    elif isinstance(exc, _KeyProblem):
        yield ConfigProblem(f"{path}.{exc.key}" if path else exc.key, str(exc))
    elif isinstance(exc, KeyError):
        yield ConfigProblem(path, "required key is missing")
    else:
        yield ConfigProblem(path, str(exc))


# --- entry points --------------------------------------------------------------------------


def parse_settings(raw: Mapping[str, Any], source: str = "<config>") -> Settings:
    """Structure and check a parsed TOML document; :class:`ConfigError` lists all problems."""
    try:
        settings = _CONVERTER.structure(dict(raw), Settings)
    except (ExceptionGroup, TypeError, ValueError, KeyError) as exc:
        raise ConfigError(source, list(_flatten(exc, ""))) from None
    problems = list(cross_checks(settings))
    if problems:
        raise ConfigError(source, problems)
    if not settings.default_relay:  # exactly one relay (checked above): it is the default
        settings = attrs.evolve(settings, default_relay=settings.relays[0].name)
    return settings


def find_config_file(explicit: str | None) -> Path | None:
    """``--config PATH``, else ``$DISPATCH_CONFIG``, else ``./dispatch.toml`` if it exists."""
    if explicit:
        return Path(explicit)
    if env := os.environ.get(CONFIG_ENV):
        return Path(env)
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.exists() else None


def load_settings(path: Path | None, *, unreadable_hint: str | None = None) -> Settings:
    """Read and validate ``path`` (``None``: the built-in defaults).

    ``unreadable_hint`` ends the message for a file that cannot be read (default: check the
    path given to --config, or to $DISPATCH_CONFIG when that named it).
    """
    if path is None:
        return parse_settings({}, "built-in defaults")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        if unreadable_hint is None:
            named_by = "--config"
            if os.environ.get(CONFIG_ENV) == str(path):
                named_by = f"${CONFIG_ENV}"
            unreadable_hint = f"check the path given to {named_by}"
        raise ConfigError(
            str(path),
            [ConfigProblem("", f"cannot read the file: {exc.strerror}; {unreadable_hint}")],
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(str(path), [ConfigProblem("", "is not UTF-8 text")]) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), [ConfigProblem(*toml_errors.explain(exc, text))]) from None
    return parse_settings(raw, str(path))
