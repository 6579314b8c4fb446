"""Draws scripts/scale.sh's chart as a plain SVG (no plotting library needed): CPU (cores) and
RSS (MiB) of one healthgate process against the number of checks, on a log scale.

  scale_chart.py CHECKS_JSON OUT_SVG
"""

import json
import math
import sys

W, H = 720, 300
PANEL_W, PANEL_H = 300, 200
LEFT, TOP = 60, 50


def panel(x0, title, points, unit):
    xs = [math.log10(p[0]) for p in points]
    ys = [p[1] for p in points]
    x_lo, x_hi = math.floor(min(xs)), math.ceil(max(xs))
    if x_hi == x_lo:
        x_hi += 1
    y_hi = max(ys) * 1.15 or 1.0
    sx = lambda x: x0 + (x - x_lo) / (x_hi - x_lo) * PANEL_W
    sy = lambda y: TOP + PANEL_H - y / y_hi * PANEL_H
    out = [
        f'<text x="{x0 + PANEL_W / 2}" y="{TOP - 20}" text-anchor="middle" font-weight="bold">{title}</text>',
        f'<line x1="{x0}" y1="{TOP + PANEL_H}" x2="{x0 + PANEL_W}" y2="{TOP + PANEL_H}" stroke="#333"/>',
        f'<line x1="{x0}" y1="{TOP}" x2="{x0}" y2="{TOP + PANEL_H}" stroke="#333"/>',
    ]
    for d in range(x_lo, x_hi + 1):
        out.append(
            f'<text x="{sx(d)}" y="{TOP + PANEL_H + 16}" text-anchor="middle">{10 ** d:,}</text>'
        )
    for k in range(5):
        y = y_hi * k / 4
        out.append(
            f'<text x="{x0 - 6}" y="{sy(y) + 4}" text-anchor="end">{y:.2g}</text>'
            f'<line x1="{x0}" y1="{sy(y)}" x2="{x0 + PANEL_W}" y2="{sy(y)}" stroke="#ddd"/>'
        )
    path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in zip(xs, ys))
    out.append(f'<polyline points="{path}" fill="none" stroke="#1f77b4" stroke-width="2"/>')
    for x, y in zip(xs, ys):
        out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="#1f77b4"/>')
        out.append(
            f'<text x="{sx(x):.1f}" y="{sy(y) - 8:.1f}" text-anchor="middle" font-size="10">{y:.3g}</text>'
        )
    out.append(
        f'<text x="{x0 + PANEL_W / 2}" y="{TOP + PANEL_H + 36}" text-anchor="middle">checks (log scale)</text>'
    )
    out.append(
        f'<text x="{x0 - 45}" y="{TOP + PANEL_H / 2}" text-anchor="middle" '
        f'transform="rotate(-90 {x0 - 45} {TOP + PANEL_H / 2})">{unit}</text>'
    )
    return out


def main():
    results = json.load(open(sys.argv[1]))
    cpu = [(r["checks"], r["cpu_cores"]) for r in results]
    rss = [(r["checks"], r["rss_mib"]) for r in results]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
        'font-family="sans-serif" font-size="12">',
        f'<rect width="{W}" height="{H}" fill="white"/>',
    ]
    parts += panel(LEFT, "CPU of one process", cpu, "cores")
    parts += panel(LEFT + PANEL_W + 60, "Memory (RSS)", rss, "MiB")
    parts.append("</svg>")
    with open(sys.argv[2], "w") as f:
        f.write("\n".join(parts) + "\n")


if __name__ == "__main__":
    main()
