"""What a node id may look like (``database.node_id``, ``data_dir/node-id``; docs/scaling.md).

Shared by the configuration check and storage, which generates and reads the id: letters,
digits, ``.``, ``_`` and ``-``, up to 63 characters, so it fits a log line, a dashboard cell
and PostgreSQL's ``application_name`` as it is.
"""

from __future__ import annotations

import re
from typing import Final

_VALID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
RULE: Final = "use 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit"


def check_node_id(node_id: str) -> str:
    """``node_id`` if it is a usable id; :class:`ValueError` naming the key otherwise."""
    if not _VALID.fullmatch(node_id):
        raise ValueError(f"database.node_id {node_id!r}: {RULE}")
    return node_id
