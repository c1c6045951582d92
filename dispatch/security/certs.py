"""TLS for every listener: the configured certificate, or a persisted self-signed one.

With ``tls.cert_file``/``tls.key_file`` empty, a self-signed certificate is generated the
first time and kept in ``<data_dir>/tls/`` (key file mode 600, directory 700), so clients
that pin it keep working across restarts. It is regenerated only when missing, unreadable or
within :data:`RENEW_BEFORE` of expiry. Everything here blocks: run it in a worker thread.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import ssl
from pathlib import Path
from typing import Final

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dispatch.config import Settings

log = logging.getLogger("dispatch.tls")

VALIDITY: Final = datetime.timedelta(days=3 * 365)
RENEW_BEFORE: Final = datetime.timedelta(days=30)
CERT_NAME: Final = "selfsigned-cert.pem"
KEY_NAME: Final = "selfsigned-key.pem"


@attrs.frozen
class CertificateFiles:
    cert_file: Path
    key_file: Path
    self_signed: bool


def _still_good(cert_path: Path, key_path: Path) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError):
        return False
    return cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC) > RENEW_BEFORE


def _write_private(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.chmod(tmp, mode)  # in case the file existed with other bits
    tmp.replace(path)


def generate_self_signed(server_name: str, cert_path: Path, key_path: Path) -> None:
    """Write a new P-256 key (mode 600) and a self-signed certificate for ``server_name``."""
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    if server_name and server_name != "localhost" and server_name.isascii():
        names.insert(0, x509.DNSName(server_name))
    names += [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, server_name or "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_private(key_path, key_pem, 0o600)
    _write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def certificate_file(settings: Settings) -> Path:
    """The certificate file the listeners serve: ``tls.cert_file``, or the self-signed one
    :func:`ensure_certificate` keeps (which may not exist yet before the first start)."""
    if settings.tls.cert_file:
        return Path(settings.tls.cert_file)
    return Path(settings.data_dir) / "tls" / CERT_NAME


def not_valid_after(cert_path: Path) -> float:
    """The Unix time the first certificate in a PEM file expires (its ``notAfter``).

    Raises ``OSError`` when the file cannot be read and ``ValueError`` when it holds no
    certificate."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return cert.not_valid_after_utc.timestamp()


def ensure_certificate(settings: Settings) -> CertificateFiles:
    """The certificate to serve: the configured files, or the persisted self-signed pair."""
    if settings.tls.cert_file:
        return CertificateFiles(Path(settings.tls.cert_file), Path(settings.tls.key_file), False)
    directory = Path(settings.data_dir) / "tls"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    cert_path, key_path = directory / CERT_NAME, directory / KEY_NAME
    if not _still_good(cert_path, key_path):
        log.info("generating a self-signed certificate in %s", directory)
        generate_self_signed(settings.listener.server_name, cert_path, key_path)
    return CertificateFiles(cert_path, key_path, True)


def server_context(files: CertificateFiles) -> ssl.SSLContext:
    """A server-side context: TLS 1.2 or newer, the certificate loaded, no client certificates."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(files.cert_file, files.key_file)
    return context
