"""``dispatch dkim generate`` as an operator runs it, the keys it writes, the configuration's
``[[dkim]]`` checks, and the start-up refusals of a key that cannot be used.

The printed record is parsed as a zone-file TXT record with dnspython and served by a
loopback DNS server; dkimpy then verifies a message signed with the written key against it.
"""

from __future__ import annotations

import base64
import os
import stat
import subprocess
import sys
from pathlib import Path

import dkim
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from dispatch.config import ConfigError, parse_settings
from dispatch.relays.dkim_sign import sign_message
from dispatch.security.dkim_keys import DkimKeyError, load_key
from tests.relays.peers import DnsServer
from tests.support.config import base_config, dump

pytestmark = pytest.mark.slow  # a subprocess per generated key

REPO = Path(__file__).resolve().parents[2]
MESSAGE = b"From: a@example.com\r\nSubject: hi\r\n\r\nbody\r\n"


def dispatch(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DISPATCH_CONFIG"}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "dispatch", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
        cwd=cwd,
    )


def zone_record(output: str) -> tuple[str, str]:
    """The printed zone-file line: its owner name and its rdata text."""
    line = next(line for line in output.splitlines() if " IN TXT " in line)
    name, rest = line.split(" 3600 IN TXT ", 1)
    return name, rest


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_generate_writes_a_private_key_and_prints_a_record_that_verifies(
    tmp_path: Path, algorithm: str
) -> None:
    config = tmp_path / "dispatch.toml"
    config.write_text(dump(base_config(tmp_path)))
    done = dispatch(
        "dkim", "generate", "Example.COM", "--selector", "s2026", "--algorithm", algorithm,
        "--config", str(config), cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    key_path = tmp_path / "data" / "dkim" / "example.com.s2026.key"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_path.parent.stat().st_mode) == 0o700
    assert f'private_key_file = "{key_path}"' in done.stdout
    assert 'domain = "example.com"' in done.stdout
    name, rdata_text = zone_record(done.stdout)
    assert name == "s2026._domainkey.example.com."
    rdata = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TXT, rdata_text)
    value = b"".join(rdata.strings).decode()  # type: ignore[attr-defined]
    assert value.startswith(f"v=DKIM1; k={algorithm}; p=")
    assert all(len(s) <= 255 for s in rdata.strings)  # type: ignore[attr-defined]
    # The key signs, and the published record verifies the signature.
    key = load_key("example.com", "s2026", key_path)
    assert key.public_record == value
    server = DnsServer()
    try:
        server.add("s2026._domainkey.example.com", "TXT", rdata_text)
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers, resolver.port = ["127.0.0.1"], server.port

        def get_txt(name: bytes, timeout: float = 5) -> bytes:
            answer = resolver.resolve(name.decode(), "TXT", lifetime=timeout)
            return b"".join(answer[0].strings)

        _, header = sign_message(MESSAGE, {"example.com": key}, "")
        assert dkim.verify(header + MESSAGE, dnsfunc=get_txt)
    finally:
        server.stop()


def test_generate_refuses_to_replace_a_key_and_bad_names(tmp_path: Path) -> None:
    out = tmp_path / "k.key"
    first = dispatch("dkim", "generate", "example.com", "--out", str(out), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before = out.read_bytes()
    again = dispatch("dkim", "generate", "example.com", "--out", str(out), cwd=tmp_path)
    assert again.returncode == 1
    assert f"{out} already exists" in again.stderr
    assert out.read_bytes() == before
    bad = dispatch("dkim", "generate", "not a domain", cwd=tmp_path)
    assert bad.returncode == 1
    assert "'not a domain' is not a domain name" in bad.stderr
    selector = dispatch("dkim", "generate", "example.com", "--selector", "a_b", cwd=tmp_path)
    assert selector.returncode == 1
    assert "'a_b' is not a selector" in selector.stderr


def test_config_checks_name_the_key(tmp_path: Path) -> None:
    raw = base_config(
        tmp_path,
        dkim=[
            {"domain": "example.com", "selector": "ok", "private_key_file": "/k"},
            {"domain": "Example.com", "selector": "bad selector", "private_key_file": ""},
            {"domain": "nodot", "selector": "s", "private_key_file": "/k2"},
        ],
    )
    with pytest.raises(ConfigError) as caught:
        parse_settings(raw)
    problems = {p.path: p.message for p in caught.value.problems}
    assert "already has a key in dkim[0]" in problems["dkim[1].domain"]
    assert "is not a selector" in problems["dkim[1].selector"]
    assert "dispatch dkim generate Example.com" in problems["dkim[1].private_key_file"]
    assert "is not a domain name" in problems["dkim[2].domain"]
    incomplete = base_config(tmp_path, dkim=[{"domain": "example.com", "selector": "s"}])
    with pytest.raises(ConfigError) as caught:
        parse_settings(incomplete)
    assert [str(p) for p in caught.value.problems] == [
        "dkim[0].private_key_file: required key is missing"
    ]
    provider = base_config(
        tmp_path, relays=[{"name": "pm", "kind": "postmark", "api_key": "k", "dkim_sign": True}]
    )
    with pytest.raises(ConfigError) as caught:
        parse_settings(provider)
    assert "relays[0].dkim_sign: unknown key" in str(caught.value)


def test_key_files_dispatch_cannot_use(tmp_path: Path) -> None:
    missing = tmp_path / "missing.key"
    with pytest.raises(DkimKeyError, match=r"does not exist; make a key with `dispatch dkim"):
        load_key("example.com", "s", missing, where="dkim[0].private_key_file")
    loose = tmp_path / "loose.key"
    out = dispatch("dkim", "generate", "example.com", "--out", str(loose), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    loose.chmod(0o644)
    with pytest.raises(DkimKeyError, match=r"mode 0644\); .* chmod 600"):
        load_key("example.com", "s", loose)
    garbage = tmp_path / "garbage.key"
    garbage.write_text("not a key\n")
    garbage.chmod(0o600)
    with pytest.raises(DkimKeyError, match="is not an RSA or Ed25519 private key"):
        load_key("example.com", "s", garbage)
    ecdsa = tmp_path / "ec.key"
    ecdsa.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ecdsa.chmod(0o600)
    with pytest.raises(DkimKeyError, match="is not an RSA or Ed25519 private key"):
        load_key("example.com", "s", ecdsa)
    small = tmp_path / "small.key"  # cryptography refuses to make one: openssl does
    subprocess.run(
        ["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:768",
         "-out", str(small)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    small.chmod(0o600)
    with pytest.raises(DkimKeyError, match="768-bit RSA key"):
        load_key("example.com", "s", small)


def test_other_key_forms_are_read(tmp_path: Path) -> None:
    """openssl genpkey's PKCS#8 RSA, and dkimpy dknewkey's base64 Ed25519 seed."""
    pkcs8 = tmp_path / "pkcs8.key"
    pkcs8.write_bytes(
        rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    pkcs8.chmod(0o600)
    assert load_key("example.com", "s", pkcs8).algorithm == "rsa"
    seed = tmp_path / "seed.key"
    seed.write_bytes(base64.b64encode(os.urandom(32)) + b"\n")  # as dknewkey writes it
    seed.chmod(0o600)
    key = load_key("example.com", "s", seed)
    assert key.algorithm == "ed25519"
    _, header = sign_message(MESSAGE, {"example.com": key}, "")
    assert header.startswith(b"DKIM-Signature: v=1; a=ed25519-sha256;")


def test_the_daemon_does_not_start_with_a_key_it_cannot_use(tmp_path: Path) -> None:
    key = tmp_path / "group-readable.key"
    out = dispatch("dkim", "generate", "example.com", "--out", str(key), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    key.chmod(0o640)
    config = tmp_path / "dispatch.toml"
    table = {"domain": "example.com", "selector": "s", "private_key_file": str(key)}
    config.write_text(dump(base_config(tmp_path, dkim=[table])))
    refusal = (
        f"dkim[0].private_key_file: {key} is readable or writable by group or others "
        f"(mode 0640); a private key must be the daemon user's alone: chmod 600 {key}"
    )
    started = dispatch("--config", str(config), cwd=tmp_path)
    assert started.returncode == 1
    assert refusal in started.stderr
    checked = dispatch("check-config", str(config), cwd=tmp_path)
    assert checked.returncode == 2
    assert refusal in checked.stderr
    key.chmod(0o600)
    assert dispatch("check-config", str(config), cwd=tmp_path).returncode == 0
