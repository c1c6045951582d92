"""The command line (SPEC §12): ``python -m dispatch [run]`` and the operator commands.

``check-config``, ``hash-password``, ``set-admin-password``, ``api-key create|list|revoke``,
``spool list|show|retry|delete``, ``send-test``, ``route simulate``, ``audit``,
``suppression list|remove``, ``dkim generate``.

Exit codes: 0 success, 1 the daemon could not start or a command failed (one line on
stderr says why), 2 the configuration or the command line is invalid (every problem listed),
130 interrupted by Ctrl-C at a prompt.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Final

import trio

from dispatch import __version__
from dispatch.cli import admin as admin_cli
from dispatch.cli import api_key as api_key_cli
from dispatch.cli import audit as audit_cli
from dispatch.cli import dkim as dkim_cli
from dispatch.cli import route as route_cli
from dispatch.cli import spool as spool_cli
from dispatch.cli import suppression as suppression_cli
from dispatch.cli import webhooks as webhooks_cli
from dispatch.cli.prompt import MIN_PASSWORD_LENGTH, read_new_password
from dispatch.cli.whereabouts import no_daemon_notice
from dispatch.config import (
    ConfigError,
    Settings,
    find_config_file,
    load_settings,
    redacted,
    redacted_toml,
)
from dispatch.config.advice import config_warnings
from dispatch.logs import configure_logging
from dispatch.monitoring.flags import CommandLineFlag
from dispatch.monitoring.webhook_activity import RECENT_CALLS
from dispatch.security.passwords import hash_password

EXIT_OK: Final = 0
EXIT_CANNOT_START: Final = 1
EXIT_FAILED: Final = 1
EXIT_BAD_CONFIG: Final = 2
EXIT_INTERRUPTED: Final = 130  # what a shell reports for a command ended by Ctrl-C
DEFAULT_LOG_FORMAT: Final = "text"
DEFAULT_LOG_LEVEL: Final = "info"
CONFIG_SEARCH: Final = "$DISPATCH_CONFIG, else ./dispatch.toml if present, else built-in defaults"

EXAMPLES: Final = """\
examples:
  python -m dispatch --config dispatch.toml           run the daemon
  python -m dispatch check-config dispatch.toml       validate a file, print the result
  python -m dispatch hash-password                    hash an SMTP AUTH password
  python -m dispatch set-admin-password               set the dashboard's admin password
  python -m dispatch api-key create --name billing    make an HTTP API key
  python -m dispatch spool list --state failed        messages that failed, and why
  python -m dispatch spool retry --all                deliver all waiting mail now
  python -m dispatch route simulate a@example.com b@example.org
                                                      which relay would take this mail
  python -m dispatch audit --since 24h                what was changed, by whom
  python -m dispatch dkim generate example.com        a DKIM key and its DNS record
  python -m dispatch suppression list                 addresses not mailed after a bounce
  python -m dispatch COMMAND --help                   more about one command

docs/ explains each command; the configuration keys are in docs/configuration.md.
"""


def _common_options() -> argparse.ArgumentParser:
    """The options every command takes (``--config``, ``--log-format``, ``--log-level``)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help=f"configuration file (default: {CONFIG_SEARCH})",
    )
    common.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=argparse.SUPPRESS,
        help=f"log line format (default: {DEFAULT_LOG_FORMAT})",
    )
    common.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default=argparse.SUPPRESS,
        help=f"lowest level logged (default: {DEFAULT_LOG_LEVEL})",
    )
    return common


type Commands = argparse._SubParsersAction[argparse.ArgumentParser]


def _parser() -> argparse.ArgumentParser:
    common = _common_options()
    parser = argparse.ArgumentParser(
        prog="dispatch",
        parents=[common],
        description="Dispatch: a self-hosted mail relay daemon. Without a command, runs it.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"dispatch {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("run", parents=[common], help="run the daemon (the default)")
    for add in (
        _add_check_config,
        _add_hash_password,
        _add_set_admin_password,
        _add_api_key,
        spool_cli.add_parser,
        spool_cli.add_send_test_parser,
        _add_route,
        audit_cli.add_parser,
        webhooks_cli.add_parser,
        dkim_cli.add_parser,
        suppression_cli.add_parser,
    ):
        add(commands, common)
    return parser


def _add_check_config(commands: Commands, common: argparse.ArgumentParser) -> None:
    check = commands.add_parser(
        "check-config",
        parents=[common],
        help="validate a configuration file and print the effective configuration",
    )
    check.add_argument("path", nargs="?", help="file to check (default: as for run)")
    check.add_argument("--json", action="store_true", help="print JSON instead of TOML")


def _add_hash_password(commands: Commands, common: argparse.ArgumentParser) -> None:
    hashpw = commands.add_parser(
        "hash-password",
        parents=[common],
        help=f"hash a password for listener.users (at least {MIN_PASSWORD_LENGTH} characters; "
        "read from the terminal or stdin)",
        description=f"Print an argon2id hash of a password for listener.users[].password_hash. "
        f"The password needs at least {MIN_PASSWORD_LENGTH} characters. On a terminal it is "
        "asked twice without echo; otherwise the first line of stdin is read.",
    )
    hashpw.add_argument(
        "--stdin", action="store_true", help="read the password from stdin, not the terminal"
    )


def _add_set_admin_password(commands: Commands, common: argparse.ArgumentParser) -> None:
    admin = commands.add_parser(
        "set-admin-password",
        parents=[common],
        help=f"set or change the dashboard's admin password (at least {MIN_PASSWORD_LENGTH} "
        "characters; read from the terminal or stdin)",
        description="Store the dashboard's admin password (argon2id) in the database of "
        "database.url and end every dashboard session. On a terminal it is asked twice "
        "without echo; otherwise the first line of stdin is read. No daemon is needed.",
    )
    admin.add_argument(
        "--stdin", action="store_true", help="read the password from stdin, not the terminal"
    )


def _add_api_key(commands: Commands, common: argparse.ArgumentParser) -> None:
    api_key = commands.add_parser(
        "api-key", parents=[common], help="create, list and revoke HTTP API keys"
    )
    api_key_actions = api_key.add_subparsers(dest="action", metavar="ACTION", required=True)
    create_key = api_key_actions.add_parser(
        "create", parents=[common], help="create a key and print it (shown this once only)"
    )
    create_key.add_argument("--name", required=True, help="what the key is for")
    list_keys = api_key_actions.add_parser(
        "list", parents=[common], help="list keys (never their secrets)"
    )
    revoke_key = api_key_actions.add_parser(
        "revoke", parents=[common], help="revoke a key; refused from its next request on"
    )
    revoke_key.add_argument("id", metavar="ID", help="key id or prefix (dsp_live_…)")
    for key_parser in (create_key, list_keys, revoke_key):
        key_parser.add_argument("--json", action="store_true", help="print JSON")


def _add_route(commands: Commands, common: argparse.ArgumentParser) -> None:
    route = commands.add_parser("route", parents=[common], help="routing tools")
    route_actions = route.add_subparsers(dest="action", metavar="ACTION", required=True)
    simulate = route_actions.add_parser(
        "simulate", parents=[common], help="show which rule and relay would take FROM → TO"
    )
    simulate.add_argument("sender", metavar="FROM")
    simulate.add_argument("recipient", metavar="TO")
    simulate.add_argument("--json", action="store_true", help="print JSON")


def _worker_parser() -> argparse.ArgumentParser:
    """``intake-worker``: started by the main process only, so absent from ``--help``."""
    worker = argparse.ArgumentParser(prog="dispatch intake-worker")
    worker.add_argument("--number", type=int, required=True)
    worker.add_argument("--link-fd", type=int, required=True)
    worker.add_argument("--listen-fds", required=True)
    worker.add_argument("--counts-fd", type=int, required=True)  # intake/balance.py
    worker.add_argument("--core", type=int)  # listener.pin_processes: the core to run on
    worker.add_argument("--log-format", choices=("text", "json"), default="text")
    worker.add_argument("--log-level", default="info")
    return worker


def _check_config(args: argparse.Namespace) -> int:
    path = Path(args.path) if args.path else find_config_file(getattr(args, "config", None))
    try:
        settings = load_settings(path, unreadable_hint="check the path" if args.path else None)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_BAD_CONFIG
    source = str(path) if path else "built-in defaults"
    if key_problems := dkim_cli.key_problems(settings):  # what the daemon would refuse
        lines = "\n".join(f"  {problem}" for problem in key_problems)
        print(f"{source}: {len(key_problems)} problem(s):\n{lines}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    for problem in config_warnings(settings):
        print(f"{source}: warning: {problem}", file=sys.stderr)
    if args.json:
        print(json.dumps(redacted(settings), indent=2))
    else:
        print(
            f"# {source}: valid. Effective configuration (secrets and passwords in URLs redacted):"
        )
        print(redacted_toml(settings), end="")
    return EXIT_OK


def _hash_password(args: argparse.Namespace) -> int:
    from_stdin = args.stdin or not sys.stdin.isatty()
    password = read_new_password(from_stdin, nothing_done="nothing hashed")
    if isinstance(password, int):
        return password
    print(hash_password(password))
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    from dispatch.daemon import serve
    from dispatch.supervisor import ComponentStartError

    configure_logging(
        getattr(args, "log_format", DEFAULT_LOG_FORMAT),
        getattr(args, "log_level", DEFAULT_LOG_LEVEL),
    )
    path = find_config_file(getattr(args, "config", None))
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_BAD_CONFIG
    try:
        trio.run(partial(serve, settings, path, flags=describe_flags(args, path)))
    except ComponentStartError as exc:
        print(f"dispatch: {exc}", file=sys.stderr)
        return EXIT_CANNOT_START
    except KeyboardInterrupt:  # Ctrl-C before the signal handler was installed
        return EXIT_OK
    return EXIT_OK


def describe_flags(
    args: argparse.Namespace, config_path: Path | None
) -> tuple[CommandLineFlag, ...]:
    """The daemon's flags for ``/debug/flags``: every option of the command line that takes a
    value or switches something (not ``--help`` or ``--version``), as given in ``args``, its
    default, and what the daemon runs with (``config_path``: the file that was found)."""
    defaults = {
        "config": CONFIG_SEARCH,
        "log_format": DEFAULT_LOG_FORMAT,
        "log_level": DEFAULT_LOG_LEVEL,
    }
    in_use = {"config": str(config_path) if config_path else "built-in defaults"}
    flags = []
    for action in _parser()._actions:
        if not action.option_strings or isinstance(
            action, argparse._HelpAction | argparse._VersionAction
        ):
            continue
        default = defaults.get(
            action.dest, "(none)" if action.default is argparse.SUPPRESS else str(action.default)
        )
        value = getattr(args, action.dest, argparse.SUPPRESS)
        given = None if value is argparse.SUPPRESS or value == action.default else str(value)
        flags.append(
            CommandLineFlag(
                name=max(action.option_strings, key=len),
                given=given,
                default=default,
                effective=in_use.get(action.dest, default if given is None else given),
                help=action.help or "",
            )
        )
    return tuple(flags)


def _settings_or_exit(args: argparse.Namespace) -> Settings | None:
    try:
        return load_settings(find_config_file(getattr(args, "config", None)))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return None


def _intake_worker(args: argparse.Namespace) -> int:
    from dispatch.intake.worker import pin_to_core, run_worker, yield_to_main_process

    configure_logging(args.log_format, args.log_level)
    yield_to_main_process()  # before any thread starts: threads inherit both
    if args.core is not None:
        pin_to_core(args.core)
    fds = [int(fd) for fd in args.listen_fds.split(",")]
    trio.run(run_worker, args.number, args.link_fd, fds, args.counts_fd)
    return EXIT_OK


def _check_retry(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``spool retry``: an id or --all, not both; --relay and --state only with --all."""
    if args.command != "spool" or args.action != "retry":
        return
    if args.all_messages == (args.id is not None):
        parser.error("spool retry: give a message id or --all (not both)")
    if not args.all_messages and (args.relay or args.state):
        parser.error("spool retry: --relay and --state go with --all")


def main(argv: Sequence[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    if arguments[:1] == ["intake-worker"]:
        return _intake_worker(_worker_parser().parse_args(arguments[1:]))
    parser = _parser()
    args = parser.parse_args(arguments)
    _check_retry(parser, args)
    if args.command == "check-config":
        return _check_config(args)
    if args.command == "hash-password":
        return _hash_password(args)
    if args.command == "dkim":
        settings = _settings_or_exit(args)
        return EXIT_BAD_CONFIG if settings is None else dkim_cli.generate(settings, args)
    if args.command == "suppression":
        settings = _settings_or_exit(args)
        return EXIT_BAD_CONFIG if settings is None else suppression_cli.main(settings, args)
    if args.command == "set-admin-password":
        settings = _settings_or_exit(args)
        if settings is None:
            return EXIT_BAD_CONFIG
        return admin_cli.main(settings, from_stdin=args.stdin or not sys.stdin.isatty())
    if args.command == "webhooks":
        settings = _settings_or_exit(args)
        if settings is None:
            return EXIT_BAD_CONFIG
        if not 1 <= args.limit <= RECENT_CALLS:
            parser.error(f"webhooks recent: --limit must be from 1 to {RECENT_CALLS}")
        return webhooks_cli.recent(settings, args.limit, args.json)
    if args.command in ("spool", "route", "send-test", "api-key", "audit"):
        settings = _settings_or_exit(args)
        if settings is None:
            return EXIT_BAD_CONFIG
        if args.command != "route":  # the others act on a daemon's state: say which
            config = find_config_file(getattr(args, "config", None))
            if (notice := no_daemon_notice(settings, config)) is not None:
                print(notice, file=sys.stderr)
        if args.command == "audit":
            return audit_cli.main(
                settings,
                since=args.since,
                category=args.category,
                limit=args.limit,
                as_json=args.json,
            )
        if args.command == "api-key":
            return api_key_cli.main(
                settings,
                args.action,
                name=getattr(args, "name", None),
                reference=getattr(args, "id", None),
                as_json=args.json,
            )
        if args.command == "route":
            return route_cli.simulate(settings, args.sender, args.recipient, args.json)
        if args.command == "send-test":
            return spool_cli.send_test(settings, args.relay, args.to, args.sender, args.json)
        return spool_cli.main(
            settings,
            args.action,
            getattr(args, "id", None),
            getattr(args, "state", None),
            args.json,
            all_messages=getattr(args, "all_messages", False),
            relay=getattr(args, "relay", None),
        )
    return _run(args)


def run_console_script() -> None:
    """Entry point of the ``dispatch`` console script."""
    sys.exit(main())
