"""Dispatch: a self-hosted mail relay daemon on Trio.

Mail arrives over SMTP or HTTP (intake), is written durably to the spool, and is
delivered in the background to upstream relays chosen by routing rules (delivery).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dispatch-relay")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"

__all__ = ["__version__"]
