"""MTA-STS policy discovery and cache for the ``mx`` relay (RFC 8461 §3, §5.1).

Theory of operation: :meth:`StsPolicies.policy_for` answers "which policy applies to mail for
this domain now". It looks up the ``_mta-sts.<domain>`` TXT record with the relay's own DNS
resolver (`dispatch.relays.sts_policy.parse_txt`), then

- a cached policy with the same id that has not outlived its ``max_age`` is used as it is;
- otherwise the policy is fetched from ``https://mta-sts.<domain>/.well-known/mta-sts.txt``:
  the host name is resolved with the same resolver, the connection goes to that address with
  the name as SNI and ``Host``, the certificate is verified against the system store (or the
  relay's ``ca_file``) for ``mta-sts.<domain>``; redirects are not followed (§3.3), the
  answer must be ``200`` with ``text/plain`` and at most 64 KiB; a valid policy replaces the
  cached one;
- when there is no TXT record, the lookup fails, or the fetch fails or gives an invalid
  policy, a cached policy that has not expired still applies (§5.1: a policy must survive an
  attacker removing the record); with none, the domain is treated as having no policy.

The cache is kept in memory and as one JSON file per domain in ``directory``
(``<data_dir>/mta-sts/<domain>.json``, written to a temporary file then renamed), so that a
restart keeps every policy until its ``max_age``. Entries are not refreshed in the background
(RFC 8461 §10.2 suggests it; chasquid does it): an expired policy is fetched again by the next
delivery to its domain. Concurrent deliveries to one domain share one lookup (a lock per
domain).

Counters (``dispatch/sts/cache/*`` in `dispatch.monitoring.stats.Stats`, chasquid's names):
fetches, hits, expired, failedFetch, invalid, ioErrors, marshalErrors, unmarshalErrors.

Ownership: one instance per ``mx`` relay client; it holds no connection between calls (each
fetch opens and closes its own HTTPS client), so there is nothing to close. Cancelling a call
drops its lookup or fetch; the cache is only written after a complete, valid fetch.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

import attrs
import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver
import httpx
import trio

from dispatch.monitoring.stats import Stats
from dispatch.relays.security_levels import safe_domain
from dispatch.relays.sts_policy import MODES, Policy, PolicyError, parse_policy, parse_txt

__all__ = ["MAX_POLICY_BYTES", "CachedPolicy", "StsPolicies"]

log = logging.getLogger("dispatch.relays.mx")

MAX_POLICY_BYTES: Final = 65_536  # RFC 8461 §3.3 suggests a limit; chasquid uses 64 KiB
FETCH_SECONDS_CAP: Final = 60.0  # RFC 8461 §3.3: "a timeout of one minute"
WELL_KNOWN: Final = "/.well-known/mta-sts.txt"


class _FetchError(Exception):
    """A policy could not be fetched; the text says what happened."""


@attrs.frozen
class CachedPolicy:
    """A policy as fetched, with the TXT id it was fetched for and when (Unix time)."""

    domain: str
    policy_id: str
    policy: Policy
    fetched_at: float

    def expired(self, now: float) -> bool:
        return now >= self.fetched_at + self.policy.max_age

    def to_json(self) -> str:
        return json.dumps(
            {
                "domain": self.domain,
                "id": self.policy_id,
                "fetched_at": self.fetched_at,
                "mode": self.policy.mode,
                "max_age": self.policy.max_age,
                "mx": list(self.policy.mx),
            }
        )

    @classmethod
    def from_json(cls, text: str) -> CachedPolicy:
        """Raises ValueError, KeyError or TypeError for a file that is not one of ours."""
        data = json.loads(text)
        mode = data["mode"]
        if mode not in MODES:
            raise ValueError(f"mode {mode!r}")
        mx = data["mx"]
        if not isinstance(mx, list):
            raise TypeError("mx is not a list")
        policy = Policy(mode, int(data["max_age"]), tuple(str(p) for p in mx))
        return cls(str(data["domain"]), str(data["id"]), policy, float(data["fetched_at"]))


class StsPolicies:
    """The policies of recipient domains for one relay (see the module docstring)."""

    def __init__(
        self,
        *,
        label: str,
        resolver: dns.asyncresolver.Resolver,
        ssl_context: ssl.SSLContext,
        directory: Path | None,
        stats: Stats,
        port: int = 443,
        timeout_seconds: float = FETCH_SECONDS_CAP,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``directory`` None keeps the cache in memory only; ``port`` is where policy hosts
        listen (443; tests use another); ``clock`` gives Unix time (tests move it)."""
        self._label = label
        self._resolver = resolver
        self._ssl_context = ssl_context
        self.directory = directory
        self._stats = stats
        self._port = port
        self._timeout = min(timeout_seconds, FETCH_SECONDS_CAP)
        self._clock = clock
        self._memory: dict[str, CachedPolicy] = {}
        self._locks: dict[str, trio.Lock] = {}

    async def policy_for(self, domain: str) -> Policy | None:
        """The policy to apply to mail for ``domain`` (A-labels, lower case), or None."""
        lock = self._locks.setdefault(domain, trio.Lock())
        try:
            async with lock:
                return await self._policy_for(domain)
        finally:
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._locks.pop(domain, None)  # one lock per domain being looked up, not ever

    async def _policy_for(self, domain: str) -> Policy | None:
        s = self._stats
        now = self._clock()
        cached = await self._cached(domain)
        if cached is not None and cached.expired(now):
            s.sts_cache_expired.add()
            log.info("%s: the MTA-STS policy of %s expired; fetching it again", self._label, domain)
            self._memory.pop(domain, None)
            cached = None
        policy_id = await self._txt_id(domain)
        if cached is not None and policy_id in (None, cached.policy_id):
            s.sts_cache_hits.add()  # no record now, or unchanged: the cached one holds (§5.1)
            return cached.policy
        if policy_id is None:
            return None
        s.sts_cache_fetches.add()
        try:
            text = await self._fetch(domain)
            policy = parse_policy(text)
        except _FetchError as exc:
            s.sts_cache_failed_fetch.add()
            log.warning("%s: MTA-STS policy of %s not fetched: %s", self._label, domain, exc)
            return cached.policy if cached is not None else None
        except PolicyError as exc:
            s.sts_cache_invalid.add()
            log.warning("%s: MTA-STS policy of %s is invalid: %s", self._label, domain, exc)
            return cached.policy if cached is not None else None
        entry = CachedPolicy(domain, policy_id, policy, now)
        self._memory[domain] = entry
        await trio.to_thread.run_sync(self._write, entry)
        log.info(
            "%s: MTA-STS policy of %s (id %s): mode %s, mx %s, max_age %d s",
            self._label,
            domain,
            policy_id,
            policy.mode,
            ", ".join(policy.mx) or "-",
            policy.max_age,
        )
        return policy

    # --- DNS -------------------------------------------------------------------------------

    async def _txt_id(self, domain: str) -> str | None:
        """The id of the domain's STSv1 TXT record; None if it has none or it cannot be read
        now (a lookup failure counts as failedFetch, an invalid record as invalid)."""
        try:
            answer = await self._resolver.resolve(f"_mta-sts.{domain}.", dns.rdatatype.TXT)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        except dns.exception.DNSException as exc:
            self._stats.sts_cache_failed_fetch.add()
            log.warning("%s: TXT lookup of _mta-sts.%s failed: %s", self._label, domain, exc)
            return None
        texts = [
            b"".join(rdata.strings).decode("utf-8", "replace")
            for rdata in answer
            if hasattr(rdata, "strings")
        ]
        try:
            return parse_txt(texts)
        except PolicyError as exc:
            self._stats.sts_cache_invalid.add()
            log.warning("%s: _mta-sts.%s: %s", self._label, domain, exc)
            return None

    async def _addresses(self, host: str) -> list[str]:
        addresses: list[str] = []
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            try:
                answer = await self._resolver.resolve(f"{host}.", rdtype)
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                continue
            except dns.exception.DNSException as exc:
                raise _FetchError(f"address lookup for {host} failed: {exc}") from None
            addresses.extend(rdata.to_text() for rdata in answer)
        if not addresses:
            raise _FetchError(f"{host} has no address records")
        return addresses

    # --- HTTPS -----------------------------------------------------------------------------

    async def _fetch(self, domain: str) -> str:
        """The policy file's text, or `_FetchError` (tries each address of the host)."""
        host = f"mta-sts.{domain}"
        errors: list[str] = []
        for address in (await self._addresses(host))[:3]:
            try:
                return await self._fetch_from(host, address)
            except _FetchError as exc:
                errors.append(str(exc))
        raise _FetchError("; ".join(errors))

    async def _fetch_from(self, host: str, address: str) -> str:
        """One address: the whole exchange within the fetch timeout (a server trickling an
        endless body is cut off there, as a timed-out fetch)."""
        try:
            with trio.fail_after(self._timeout):
                return await self._get(host, address)
        except trio.TooSlowError:
            raise _FetchError(
                f"{host} ({address}) did not answer within {self._timeout:g} s"
            ) from None

    async def _get(self, host: str, address: str) -> str:
        where = f"[{address}]" if ":" in address else address
        url = f"https://{where}:{self._port}{WELL_KNOWN}"
        shown = f"https://{host}{'' if self._port == 443 else f':{self._port}'}{WELL_KNOWN}"
        headers = {"Host": host if self._port == 443 else f"{host}:{self._port}"}
        try:
            async with httpx.AsyncClient(
                verify=self._ssl_context,
                timeout=self._timeout,
                follow_redirects=False,  # RFC 8461 §3.3: redirects MUST NOT be followed
                trust_env=False,  # no proxy: the certificate is checked for the policy host
            ) as client:
                request = client.build_request(
                    "GET", url, headers=headers, extensions={"sni_hostname": host}
                )
                response = await client.send(request, stream=True)
                try:
                    return await self._body(shown, address, response)
                finally:
                    await response.aclose()
        except httpx.HTTPError as exc:
            raise _FetchError(f"{shown} ({address}): {_why(exc)}") from None

    async def _body(self, shown: str, address: str, response: httpx.Response) -> str:
        if response.status_code != 200:
            raise _FetchError(f"{shown} ({address}) answered {response.status_code}")
        content_type = response.headers.get("content-type", "")
        if content_type.split(";")[0].strip().lower() != "text/plain":
            raise _FetchError(f"{shown} is served as {content_type or 'no type'}, not text/plain")
        too_large = _FetchError(f"{shown} is larger than {MAX_POLICY_BYTES} bytes")
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_POLICY_BYTES:
            raise too_large
        body = bytearray()
        # Read to the end (bounded by the fetch's deadline) rather than leave the loop early:
        # httpcore's body generators are only finalised when exhausted.
        async for chunk in response.aiter_bytes():
            if len(body) <= MAX_POLICY_BYTES:
                body.extend(chunk)
        if len(body) > MAX_POLICY_BYTES:
            raise too_large
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            raise _FetchError(f"{shown} is not UTF-8 text") from None

    # --- the files -------------------------------------------------------------------------

    async def _cached(self, domain: str) -> CachedPolicy | None:
        if domain not in self._memory:
            entry = await trio.to_thread.run_sync(self._read, domain)
            if entry is not None:
                self._memory[domain] = entry
        return self._memory.get(domain)

    def _path(self, domain: str) -> Path | None:
        if self.directory is None or not safe_domain(domain):
            return None
        return self.directory / f"{domain}.json"

    def _read(self, domain: str) -> CachedPolicy | None:
        path = self._path(domain)
        if path is None:
            return None
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._stats.sts_cache_io_errors.add()
            log.error("%s: cannot read %s: %s", self._label, path, exc)
            return None
        try:
            entry = CachedPolicy.from_json(text)
        except (ValueError, KeyError, TypeError) as exc:
            self._stats.sts_cache_unmarshal_errors.add()
            log.error(
                "%s: %s is not a cached MTA-STS policy (%s); it will be fetched again",
                self._label,
                path,
                exc,
            )
            return None
        return entry if entry.domain == domain else None

    def _write(self, entry: CachedPolicy) -> None:
        path = self._path(entry.domain)
        if path is None:
            return
        try:
            text = entry.to_json()
        except (TypeError, ValueError) as exc:
            self._stats.sts_cache_marshal_errors.add()
            log.error("%s: cannot encode the policy of %s: %s", self._label, entry.domain, exc)
            return
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary.write_text(text + "\n", encoding="utf-8")
            os.replace(temporary, path)
        except OSError as exc:
            self._stats.sts_cache_io_errors.add()
            log.error(
                "%s: cannot write %s (%s): the policy is kept in memory only; check "
                "data_dir's permissions and free space",
                self._label,
                path,
                exc,
            )


def _why(exc: httpx.HTTPError) -> str:
    """The innermost cause of an httpx error (a certificate failure, a refusal)."""
    cause: BaseException = exc
    while cause.__cause__ is not None or cause.__context__ is not None:
        nxt = cause.__cause__ or cause.__context__
        assert nxt is not None
        cause = nxt
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"certificate failed verification: {cause.verify_message or cause}"
    return str(cause) or type(cause).__name__
