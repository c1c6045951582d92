"""One module per figure of SPEC §13; each returns :class:`~bench.results.Figure` objects."""
