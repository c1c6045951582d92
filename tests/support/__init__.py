"""What every test directory shares, one of each.

- :mod:`tests.support.config`: :func:`~tests.support.config.base_config`, the one builder of a
  daemon configuration (every listener on a free 127.0.0.1 port, spool and data under the test's
  directory), and the TOML writer for a ``python -m dispatch`` subprocess.
- :mod:`tests.support.waiting`: :func:`~tests.support.waiting.wait_until`, the one way to wait
  for a condition, in a blocking and a Trio form.
- :mod:`tests.support.sink`: :class:`~tests.support.sink.Sink`, the one test SMTP upstream
  (aiosmtpd), and its ``start_sink`` / ``pki`` fixtures.
- :mod:`tests.support.postgres`: a real PostgreSQL 15 for the session (``postgres_cluster``,
  started as the ``postgres`` user on a free loopback port) and a fresh database per test
  (``postgres_url``); loaded as a plugin, so any test may ask for them.
- :mod:`tests.support.sources`: ``import_sources()``, Dispatch imported from its ``.py`` files
  rather than the SMTP core's compiled build (the fuzz targets, the core's run as Python).

The real ``python -m dispatch`` subprocess and free ports stay in ``tests/conftest.py``.
"""
