"""What the Settings page shows: the effective configuration key by key, the TLS certificate
in use, and how much the spool holds.

- :func:`config_rows`: every key of the running :class:`~dispatch.config.Settings` with its
  value as :func:`dispatch.config.render.redacted` shows it (every secret, and the password
  of any URL, replaced by ``<redacted>``), whether a reload applies it (``live``) or it needs
  a restart, and whether it is the built-in default.
- :func:`certificate_facts` (blocking): the certificate file the listeners serve, its names,
  validity and SHA-256 fingerprint, and whether it is the self-signed one Dispatch made.
- :func:`spool_usage` (blocking): files, messages and bytes in each folder of the spool.
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from dispatch.config import Settings
from dispatch.config.render import redacted
from dispatch.config.settings import LIVE
from dispatch.security.certs import CERT_NAME, KEY_NAME, certificate_file

# orphaned/: bodies start-up set aside (dispatch/spool/recovery.py); absent until then.
SPOOL_FOLDERS: Final = ("incoming", "processing", "failed", "captured", "tmp", "orphaned")
MAX_VALUE_CHARS: Final = 300


@attrs.frozen
class ConfigRow:
    key: str  # dotted path, e.g. listener.ports or relays[0].host
    value: str  # JSON-like, secrets redacted
    live: bool  # a reload applies it; else it needs a restart
    default: bool | None  # equal to the built-in default (None: a list item, no default)


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= MAX_VALUE_CHARS else text[:MAX_VALUE_CHARS] + "…"


def _walk(
    obj: Any, data: Mapping[str, Any], defaults: Mapping[str, Any] | None, path: str, live: bool
) -> list[ConfigRow]:
    rows = []
    for field in attrs.fields(type(obj)):
        name = f"{path}.{field.name}" if path else field.name
        is_live = live or bool(field.metadata.get(LIVE))
        value, shown = getattr(obj, field.name), data[field.name]
        default = None if defaults is None else defaults.get(field.name)
        if attrs.has(type(value)):
            rows += _walk(value, shown, default, name, is_live)
        elif isinstance(value, tuple) and value and all(attrs.has(type(v)) for v in value):
            for index, (item, item_data) in enumerate(zip(value, shown, strict=True)):
                rows += _walk(item, item_data, None, f"{name}[{index}]", is_live)
        else:
            same = None if defaults is None else shown == default
            rows.append(ConfigRow(name, _shown(shown), is_live, same))
    return rows


def config_rows(settings: Settings) -> list[ConfigRow]:
    """Every key of ``settings``, in the order of the configuration's sections."""
    return _walk(settings, redacted(settings), redacted(Settings()), "", False)


@attrs.frozen
class CertificateFacts:
    """The certificate file the listeners serve, and what it says (``error``: unreadable)."""

    path: Path
    key_path: Path
    self_signed: bool  # the one Dispatch generates in <data_dir>/tls/ (tls.cert_file empty)
    subject: str = ""
    names: tuple[str, ...] = ()
    not_before: float | None = None
    not_after: float | None = None
    fingerprint: str = ""  # SHA-256 of the DER certificate, colon-separated hex
    error: str | None = None

    @property
    def days_left(self) -> int | None:
        if self.not_after is None:
            return None
        now = datetime.datetime.now(datetime.UTC).timestamp()
        return int((self.not_after - now) // 86400)


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def certificate_facts(settings: Settings) -> CertificateFacts:
    """Blocking: read and describe the certificate file in use."""
    path = certificate_file(settings)
    self_signed = not settings.tls.cert_file
    key_path = (
        Path(settings.data_dir) / "tls" / KEY_NAME if self_signed else Path(settings.tls.key_file)
    )
    base = CertificateFacts(path, key_path, self_signed)
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        return attrs.evolve(base, error=f"{path} does not exist yet")
    except (OSError, ValueError) as exc:
        return attrs.evolve(base, error=f"{path} cannot be read as a PEM certificate: {exc}")
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(str(name.value) for name in san)
    except x509.ExtensionNotFound:
        names = ()
    return attrs.evolve(
        base,
        subject=cert.subject.rfc4514_string(),
        names=names,
        not_before=cert.not_valid_before_utc.timestamp(),
        not_after=cert.not_valid_after_utc.timestamp(),
        fingerprint=fingerprint(cert),
    )


def self_signed_paths(settings: Settings) -> tuple[Path, Path]:
    directory = Path(settings.data_dir) / "tls"
    return directory / CERT_NAME, directory / KEY_NAME


@attrs.frozen
class FolderUsage:
    name: str
    files: int
    messages: int  # bodies (.eml): one per message, whichever form its envelope takes
    bytes: int


def _folder(path: Path) -> FolderUsage:
    files = messages = size = 0
    try:
        with os.scandir(path) as entries:
            for entry in entries:
                try:
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    size += entry.stat(follow_symlinks=False).st_size
                except FileNotFoundError:
                    continue  # removed while we looked
                files += 1
                messages += entry.name.endswith(".eml")
    except FileNotFoundError:
        pass
    return FolderUsage(path.name, files, messages, size)


def spool_usage(root: Path) -> list[FolderUsage]:
    """Blocking: one ``scandir`` per folder (a stat per file: ~0.3 s per 100,000 files)."""
    return [_folder(root / name) for name in SPOOL_FOLDERS]
