"""Small inline SVG charts for the serving page, drawn on the server.

No chart library and no asset from the internet: a polyline in a ``viewBox`` that stretches to
the page's width, so the chart works on a narrow screen and with JavaScript off. Pure
functions from numbers to markup; the page puts the figures beside them as text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup

from supervisor.metrics.series import (
    CLIENT_CLOSED_REQUESTS,
    ERRORS_4XX,
    ERRORS_5XX,
    REQUESTS,
    SECONDS_SUM,
    STEP_MS,
)

WINDOW_MS = 15 * 60 * 1000
WIDTH, HEIGHT = 300, 60


@dataclass(frozen=True)
class Chart:
    title: str
    unit: str
    values: tuple[float, ...]  # oldest first, one per STEP_MS bucket
    svg: Markup

    @property
    def last(self) -> float:
        return self.values[-1] if self.values else 0.0

    @property
    def peak(self) -> float:
        return max(self.values, default=0.0)


def sparkline(values: Sequence[float], label: str) -> Markup:
    top = max(max(values, default=0.0), 1e-9)
    n = max(len(values) - 1, 1)
    pts = " ".join(f"{i * WIDTH / n:.1f},{HEIGHT - 2 - v / top * (HEIGHT - 4):.1f}" for i, v in enumerate(values))
    return Markup(
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" preserveAspectRatio="none" role="img" '
        f'aria-label="{Markup.escape(label)}"><line x1="0" y1="{HEIGHT - 1}" x2="{WIDTH}" y2="{HEIGHT - 1}" '
        f'class="axis"/><polyline fill="none" vector-effect="non-scaling-stroke" points="{pts}"/></svg>'
    )


def request_charts(points: dict[int, list[float]], now_ms: int) -> list[Chart]:
    """Request rate, error rate and mean latency over the last ``WINDOW_MS``, from timeline points."""
    end = now_ms // STEP_MS * STEP_MS
    starts = range(end - WINDOW_MS + STEP_MS, end + STEP_MS, STEP_MS)
    rate, errors, latency = [], [], []
    for t in starts:
        p = points.get(t)
        n = p[REQUESTS] if p else 0
        rate.append(n / (STEP_MS / 1000))
        # Of the requests that got an answer: one whose client left (499) is neither an error
        # nor a success, so it counts on neither side of the rate.
        answered = n - p[CLIENT_CLOSED_REQUESTS] if p else 0
        errors.append((p[ERRORS_4XX] + p[ERRORS_5XX]) / answered * 100 if p and answered else 0.0)
        latency.append(p[SECONDS_SUM] / n * 1000 if p and n else 0.0)
    out = []
    for title, unit, values in (("Requests", "req/s", rate), ("Errors", "%", errors),
                                ("Mean latency", "ms", latency)):
        out.append(Chart(title, unit, tuple(values), sparkline(values, f"{title} ({unit}), last 15 minutes")))
    return out
