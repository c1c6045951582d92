"""Configuration: one TOML file into typed, frozen settings (SPEC §2)."""

from dispatch.config.loader import (
    ConfigError,
    ConfigProblem,
    find_config_file,
    load_settings,
    parse_settings,
)
from dispatch.config.render import apply_reload, redacted, redacted_toml
from dispatch.config.settings import RelaySettings, RouteSettings, Settings
from dispatch.config.types import Secret, parse_cidrs

__all__ = [
    "ConfigError",
    "ConfigProblem",
    "RelaySettings",
    "RouteSettings",
    "Secret",
    "Settings",
    "apply_reload",
    "find_config_file",
    "load_settings",
    "parse_cidrs",
    "parse_settings",
    "redacted",
    "redacted_toml",
]
