"""The request charts: rates per bucket over the window, drawn as an SVG polyline."""

from __future__ import annotations

from supervisor.api.charts import WINDOW_MS, request_charts, sparkline
from supervisor.metrics.series import STEP_MS


def test_request_charts_from_timeline() -> None:
    now = 10_000_000
    points = {now - STEP_MS: [20, 1, 1, 0.2, 0.05, 0], now: [5, 0, 0, 0.5, 0.2, 0],
              now - 2 * WINDOW_MS: [99, 0, 0, 1, 1, 0]}
    rate, errors, latency = request_charts(points, now + 1234)
    assert len(rate.values) == WINDOW_MS // STEP_MS
    assert rate.values[-2:] == (2.0, 0.5) and rate.peak == 2.0 and rate.last == 0.5
    assert errors.values[-2] == 10.0 and latency.values[-2] == 10.0 and latency.values[-1] == 100.0
    assert sum(rate.values[:-2]) == 0  # the old point is outside the window


def test_error_rate_leaves_client_closed_out() -> None:
    now = 10_000_000
    # 10 requests: 4 whose client left (499), 1 error among the 6 answered.
    rate, errors, _ = request_charts({now: [10, 1, 0, 0.1, 0.01, 4]}, now)
    assert rate.last == 1.0 and round(errors.last, 6) == round(100 / 6, 6)
    # Every client left: no answer, so no error rate (not a division by zero).
    assert request_charts({now: [3, 0, 0, 0.1, 0.05, 3]}, now)[1].last == 0.0


def test_sparkline_is_escaped_svg() -> None:
    svg = str(sparkline([0, 1, 2], 'a "label" <x>'))
    assert svg.startswith("<svg") and "polyline" in svg and "<x>" not in svg
    assert 'points="0.0,58.0 150.0,30.0 300.0,2.0"' in svg
