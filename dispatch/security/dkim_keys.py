"""DKIM keys: making them, reading them, and the DNS TXT record that publishes them.

A key signs one sender domain (``d=``) under one selector (``s=``): RSA (RFC 6376, 2048 bits
when made here, at least 1024 accepted as RFC 8301 §3.2 requires) or Ed25519 (RFC 8463).
:func:`generate_key` writes a new one with mode 600 and returns the TXT record; the daemon
reads each configured key at start-up with :func:`load_key`, which refuses a file that is
missing, unreadable, readable by group or others, or not a key, with a message that names the
file and what to do.

Files: RSA keys are PEM (PKCS#1 ``RSA PRIVATE KEY`` as written here, or PKCS#8 ``PRIVATE
KEY`` from ``openssl genpkey``); Ed25519 keys are PKCS#8 PEM as written here, or the single
base64 line of the 32-byte seed that dkimpy's ``dknewkey`` writes. Loading turns either into
the form dkimpy signs with. Everything here blocks on the file system: call it from a worker
thread, or at start-up.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import stat
from pathlib import Path
from typing import Final, Literal

import attrs
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from dispatch.config.dkim_checks import domain_problem, selector_problem

Algorithm = Literal["rsa", "ed25519"]
ALGORITHMS: Final[tuple[Algorithm, ...]] = ("rsa", "ed25519")
RSA_BITS: Final = 2048
RSA_MIN_BITS: Final = 1024  # RFC 8301 §3.2: verifiers must not accept less
TXT_CHUNK: Final = 255  # RFC 1035 §3.3.14: one character-string holds at most 255 octets

_SEED_LINE: Final = re.compile(rb"\s*[A-Za-z0-9+/]{43}=\s*")


class DkimKeyError(Exception):
    """A key that cannot be used; the text names the file and what to do."""


@attrs.frozen
class SigningKey:
    """One loaded key, in the form dkimpy signs with (see `dispatch.relays.dkim_sign`)."""

    domain: str
    selector: str
    algorithm: Algorithm
    private: bytes = attrs.field(repr=False)  # PKCS#1 PEM (rsa) or the base64 seed (ed25519)
    public_record: str  # the TXT record's value that matches this key

    @property
    def signature_algorithm(self) -> bytes:
        """The ``a=`` tag: rsa-sha256 (RFC 6376 §3.3) or ed25519-sha256 (RFC 8463 §3)."""
        return b"rsa-sha256" if self.algorithm == "rsa" else b"ed25519-sha256"

    @property
    def record_name(self) -> str:
        return record_name(self.selector, self.domain)


def record_name(selector: str, domain: str) -> str:
    """Where the TXT record goes (RFC 6376 §3.6.2.1): ``<selector>._domainkey.<domain>``."""
    return f"{selector}._domainkey.{domain.rstrip('.').lower()}"


def txt_value(public: rsa.RSAPublicKey | ed25519.Ed25519PublicKey) -> str:
    """The record's value: RSA as SubjectPublicKeyInfo (RFC 6376 §3.6.1), Ed25519 as the raw
    32-byte key (RFC 8463 §4.2), base64 in ``p=``."""
    if isinstance(public, rsa.RSAPublicKey):
        der = public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}"


def zone_line(name: str, value: str) -> str:
    """A zone-file line for the record, the value split into 255-octet strings (an RSA 2048
    key does not fit in one; resolvers join them, RFC 6376 §3.6.2.2)."""
    chunks = [value[i : i + TXT_CHUNK] for i in range(0, len(value), TXT_CHUNK)]
    return f"{name}. 3600 IN TXT " + " ".join(f'"{chunk}"' for chunk in chunks)


@attrs.frozen
class GeneratedKey:
    path: Path
    key: SigningKey

    def instructions(self) -> str:
        """What ``dispatch dkim generate`` prints: the file, the record, the config table."""
        key = self.key
        return "\n".join(
            [
                f"wrote the {key.algorithm} private key to {self.path} (mode 600)",
                "",
                "Publish this DNS TXT record (zone-file form):",
                "",
                zone_line(key.record_name, key.public_record),
                "",
                f"  name:  {key.record_name}",
                f"  value: {key.public_record}",
                "",
                "Then add to the configuration and restart Dispatch:",
                "",
                "[[dkim]]",
                f'domain = "{key.domain}"',
                f'selector = "{key.selector}"',
                f'private_key_file = "{self.path}"',
            ]
        )


def generate_key(
    domain: str, selector: str, algorithm: Algorithm, path: Path, *, overwrite: bool = False
) -> GeneratedKey:
    """Make a key, write it to ``path`` with mode 600 (its directory made 700 if missing),
    and return it with its record. Raises ValueError for a bad name, DkimKeyError when the
    file exists (unless ``overwrite``) or cannot be written."""
    for problem in (domain_problem(domain), selector_problem(selector)):
        if problem is not None:
            raise ValueError(problem)
    private: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    if algorithm == "rsa":
        private = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    else:
        private = ed25519.Ed25519PrivateKey.generate()
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    _write_private(path, pem, overwrite=overwrite)
    domain = domain.rstrip(".").lower()
    return GeneratedKey(path, _signing_key(domain, selector, private))


def _write_private(path: Path, data: bytes, *, overwrite: bool) -> None:
    try:
        if not path.parent.exists():
            path.parent.mkdir(mode=0o700, parents=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_TRUNC if overwrite else os.O_EXCL)
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise DkimKeyError(
            f"{path} already exists; pass --out with another path, or remove it first "
            "(the published record would no longer match a replaced key)"
        ) from None
    except OSError as exc:
        raise DkimKeyError(f"cannot write {path}: {exc.strerror}; check the directory") from None
    try:
        os.fchmod(fd, 0o600)  # an existing file keeps its bits through O_TRUNC
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def load_key(domain: str, selector: str, path: Path, *, where: str = "") -> SigningKey:
    """Read the key for ``domain``/``selector`` from ``path``; ``where`` (a config key such
    as ``dkim[0].private_key_file``) starts every error message."""
    prefix = f"{where}: " if where else ""
    try:
        info = path.stat()
        if info.st_mode & 0o077:
            mode = stat.S_IMODE(info.st_mode)
            raise DkimKeyError(
                f"{prefix}{path} is readable or writable by group or others (mode "
                f"{mode:04o}); a private key must be the daemon user's alone: chmod 600 {path}"
            )
        data = path.read_bytes()
    except FileNotFoundError:
        raise DkimKeyError(
            f"{prefix}{path} does not exist; make a key with "
            f"`dispatch dkim generate {domain} --selector {selector}` or fix the path"
        ) from None
    except OSError as exc:
        raise DkimKeyError(
            f"{prefix}cannot read {path}: {exc.strerror}; the daemon's user must be able to "
            "read it (chown it to that user, mode 600)"
        ) from None
    private = _parse(data)
    if private is None:
        raise DkimKeyError(
            f"{prefix}{path} is not an RSA or Ed25519 private key (PEM, or dkimpy's base64 "
            f"Ed25519 seed); make one with `dispatch dkim generate {domain}`"
        )
    if isinstance(private, rsa.RSAPrivateKey) and private.key_size < RSA_MIN_BITS:
        raise DkimKeyError(
            f"{prefix}{path} is a {private.key_size}-bit RSA key; verifiers refuse keys under "
            f"{RSA_MIN_BITS} bits (RFC 8301): make a new one with `dispatch dkim generate`"
        )
    return _signing_key(domain.rstrip(".").lower(), selector, private)


def _parse(data: bytes) -> rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey | None:
    if _SEED_LINE.fullmatch(data):  # dkimpy's dknewkey form of an Ed25519 key
        try:
            seed = base64.b64decode(data.strip(), validate=True)
        except binascii.Error:
            return None
        return ed25519.Ed25519PrivateKey.from_private_bytes(seed) if len(seed) == 32 else None
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):  # not PEM, encrypted, or an unsupported kind
        return None
    if isinstance(private, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
        return private
    return None


def _signing_key(
    domain: str, selector: str, private: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
) -> SigningKey:
    if isinstance(private, rsa.RSAPrivateKey):
        # dkimpy parses PKCS#1 PEM with "\n" line ends.
        form = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        return SigningKey(domain, selector, "rsa", form, txt_value(private.public_key()))
    seed = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return SigningKey(
        domain, selector, "ed25519", base64.b64encode(seed), txt_value(private.public_key())
    )
