"""``dispatch dkim generate DOMAIN``: make a DKIM key and print the DNS record to publish.

The key goes to ``<data_dir>/dkim/<domain>.<selector>.key`` (or ``--out``) with mode 600, its
directory 700 when made here; an existing file is never replaced (the record published for it
would stop matching). The daemon need not run. docs/deliverability.md explains the record.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Final

from dispatch.config import Settings
from dispatch.security.dkim_keys import ALGORITHMS, DkimKeyError, generate_key, load_key

DEFAULT_SELECTOR: Final = "dispatch"


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    dkim = commands.add_parser("dkim", parents=[common], help="DKIM signing keys")
    actions = dkim.add_subparsers(dest="action", metavar="ACTION", required=True)
    generate = actions.add_parser(
        "generate",
        parents=[common],
        help="make a signing key for DOMAIN and print its DNS TXT record",
        description="Write a new private key (mode 600) and print the DNS TXT record to "
        "publish and the [[dkim]] table to add. The daemon need not run.",
    )
    generate.add_argument("domain", metavar="DOMAIN", help="the sender domain (d=)")
    generate.add_argument(
        "--selector",
        default=DEFAULT_SELECTOR,
        help=f"the selector (s=), the record's name prefix (default: {DEFAULT_SELECTOR})",
    )
    generate.add_argument(
        "--algorithm",
        choices=ALGORITHMS,
        default="rsa",
        help="rsa (2048 bits, verified everywhere; the default) or ed25519 (RFC 8463: short "
        "records, not yet verified by every receiver: pair it with an rsa key)",
    )
    generate.add_argument(
        "--out",
        metavar="PATH",
        help="where to write the key (default: <data_dir>/dkim/DOMAIN.SELECTOR.key)",
    )


def key_problems(settings: Settings) -> list[str]:
    """Each ``[[dkim]]`` key the daemon would refuse at start-up, and why (``check-config``
    reads the key files as the daemon does)."""
    problems = []
    for i, key in enumerate(settings.dkim):
        where = f"dkim[{i}].private_key_file"
        try:
            load_key(key.domain, key.selector, Path(key.private_key_file), where=where)
        except DkimKeyError as exc:
            problems.append(str(exc))
    return problems


def generate(settings: Settings, args: argparse.Namespace) -> int:
    domain = str(args.domain).rstrip(".").lower()
    default = Path(settings.data_dir) / "dkim" / f"{domain}.{args.selector}.key"
    path = (Path(args.out) if args.out else default).absolute()
    try:
        made = generate_key(domain, args.selector, args.algorithm, path)
    except (ValueError, DkimKeyError) as exc:
        print(f"dkim generate: {exc}", file=sys.stderr)
        return 1
    print(made.instructions())
    return 0
