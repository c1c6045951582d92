"""The series names a PromQL expression reads, for checking dashboards and rules against
what Dispatch serves; and how a served family's series are named."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Final

_STRING: Final = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_MATCHERS: Final = re.compile(r"\{[^}]*\}")
_RANGE: Final = re.compile(r"\[[^\]]*\]")
_GROUPING: Final = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", re.IGNORECASE
)
_IDENTIFIER: Final = re.compile(r"(?<![\w$.])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?")
_KEYWORDS: Final = frozenset(
    {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"}
    | {"group_left", "group_right", "inf", "nan", "atan2", "start", "end"}
)
_LABEL_VALUES: Final = re.compile(r"label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*,")


def series_names(expr: str) -> set[str]:
    """Metric names ``expr`` selects: identifiers that are neither functions, keywords,
    label names (in matchers or grouping clauses) nor inside strings or ranges. A Grafana
    ``label_values(metric, label)`` query reads ``metric``."""
    if found := _LABEL_VALUES.findall(expr):
        return set(found)
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    return {
        name
        for name, call in _IDENTIFIER.findall(text)
        if not call and name.lower() not in _KEYWORDS
    }


def exposed_names(families: Mapping[str, str]) -> dict[str, str]:
    """``{series name as scraped: family}`` for families ``{name: type}`` as the text
    parser reports them (a counter's family name lacks ``_total``)."""
    names: dict[str, str] = {}
    for family, kind in families.items():
        if kind == "counter":
            names[f"{family}_total"] = family
        elif kind == "histogram":
            for suffix in ("_bucket", "_sum", "_count"):
                names[family + suffix] = family
        else:
            names[family] = family
    return names


def documented_form(families: Mapping[str, str]) -> set[str]:
    """The names the docs give families: counters with ``_total``, others as they are."""
    return {f"{name}_total" if kind == "counter" else name for name, kind in families.items()}


def unknown_series(exprs: Iterable[str], served: Mapping[str, str]) -> dict[str, set[str]]:
    """``{expression: names it reads that no served family exposes}``, for the failing ones."""
    exposed = exposed_names(served)
    result: dict[str, set[str]] = {}
    for expr in exprs:
        unknown = {name for name in series_names(expr) if name not in exposed}
        if unknown:
            result[expr] = unknown
    return result
