"""The Overview's SVG charts as markup: scale, axis, runs broken at gaps, everything escaped."""

from __future__ import annotations

import re

from dispatch.dashboard.charts import Series, line_chart, nice_ceiling

DAY = 86_400.0
START = 1_800_000_000.0  # 2027-01-15 08:00 UTC: the ticks fall on 12:00, 18:00, 00:00, 06:00


def test_the_top_of_the_scale_is_a_round_number() -> None:
    assert nice_ceiling(0) == 4
    assert nice_ceiling(3) == 4
    assert nice_ceiling(5) == 10  # not 5: its middle line would be 2.5 messages
    assert nice_ceiling(7) == 10
    assert nice_ceiling(11) == 20
    assert nice_ceiling(21) == 40  # not 25, for the same reason
    assert nice_ceiling(230) == 250
    assert nice_ceiling(251) == 400
    assert nice_ceiling(401) == 500
    assert nice_ceiling(1000) == 1000


def test_a_chart_draws_each_run_and_escapes_every_text() -> None:
    points = [(START + 60 * n, float(n)) for n in range(3)]
    later = [(START + 3600, 5.0)]  # after a gap longer than the series allows: a dot
    svg = str(
        line_chart(
            chart_id="c",
            title="Sent <b>& received</b>",
            description='totals "1" & <2>',
            series=[Series("Waiting <x>", "waiting", points + later, gap=120.0)],
            start=START,
            end=START + DAY,
        )
    )
    assert svg.startswith('<svg class="chart" viewBox="0 0 720 200" role="img"')
    assert 'aria-labelledby="c-title c-desc"' in svg
    assert '<title id="c-title">Sent &lt;b&gt;&amp; received&lt;/b&gt;</title>' in svg
    assert "totals &#34;1&#34; &amp; &lt;2&gt;" in svg
    assert svg.count("<polyline") == 1
    assert svg.count("<circle") == 1
    assert "<title>Waiting &lt;x&gt;</title>" in svg
    assert re.findall(r'<text class="axis"[^>]*>([^<]+)</text>', svg) == [
        "0", "5", "10", "12:00", "18:00", "00:00", "06:00",
    ]  # fmt: skip
    assert "<script" not in svg  # the page's CSP allows no inline script
    assert "style=" not in svg  # nor style attributes
