"""Bar charts drawn as inline SVG on the server (no JavaScript, nothing from a CDN)."""

from __future__ import annotations

import time
from html import escape

WIDTH, HEIGHT, PAD = 640, 140, 28


def bar_chart(points: list[tuple[float, int, int]], *, title: str, bucket: float, chart_id: str) -> str:
    """Finished (blue) and failed (red) calls per bucket; hover a bar for its numbers."""
    n = max(1, len(points))
    top = max([p[1] for p in points] + [1])
    slot = (WIDTH - PAD) / n
    bar = max(1.0, slot * 0.8)
    inner = HEIGHT - 2 * PAD // 2 - 16
    parts = [f'<svg class="chart" id="{escape(chart_id)}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
             f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
             f'<text x="{PAD}" y="12" class="chart-title">{escape(title)}</text>',
             f'<text x="{PAD - 4}" y="{18 + 4}" text-anchor="end" class="axis">{top}</text>',
             f'<text x="{PAD - 4}" y="{HEIGHT - 14}" text-anchor="end" class="axis">0</text>',
             f'<line x1="{PAD}" y1="{HEIGHT - 16}" x2="{WIDTH}" y2="{HEIGHT - 16}" class="base"/>']
    for i, (start, done, failed) in enumerate(points):
        x = PAD + i * slot + (slot - bar) / 2
        h_all = inner * done / top
        h_bad = inner * failed / top
        label = f"{_when(start, bucket)}: {done} finished, {failed} failed"
        parts.append(f'<g><title>{escape(label)}</title>'
                     f'<rect x="{x:.1f}" y="{HEIGHT - 16 - h_all:.1f}" width="{bar:.1f}" height="{h_all:.1f}" class="ok"/>'
                     f'<rect x="{x:.1f}" y="{HEIGHT - 16 - h_bad:.1f}" width="{bar:.1f}" height="{h_bad:.1f}" class="bad"/>'
                     '</g>')
    if points:
        parts.append(f'<text x="{PAD}" y="{HEIGHT - 2}" class="axis">{escape(_when(points[0][0], bucket))}</text>')
        parts.append(f'<text x="{WIDTH}" y="{HEIGHT - 2}" text-anchor="end" class="axis">'
                     f'{escape(_when(points[-1][0], bucket))}</text>')
    parts.append("</svg>")
    total = sum(p[1] for p in points)
    failed_total = sum(p[2] for p in points)
    return (f'<figure><figcaption><span class="total" data-chart="{escape(chart_id)}">{total}</span> finished, '
            f'of them <span class="failed" data-chart="{escape(chart_id)}">{failed_total}</span> failed</figcaption>'
            + "".join(parts) + "</figure>")


def _when(ts: float, bucket: float) -> str:
    fmt = "%H:%M:%S" if bucket < 60 else "%H:%M" if bucket < 86400 else "%m-%d"
    if 3600 <= bucket < 86400:
        fmt = "%m-%d %H:00"
    return time.strftime(fmt, time.localtime(ts))


#: (title, bucket seconds, buckets) of the four charts
SERIES = (("per second, last 60 s", 1.0, 60), ("per minute, last 60 min", 60.0, 60),
          ("per hour, last 24 h", 3600.0, 24), ("per day, last 30 days", 86400.0, 30))
