#!/usr/bin/env python3
"""Plots server RSS against connections from bench-memory.sh's memory.json, as SVG.

Usage: scripts/plot-memory.py DIR/memory.json DIR/memory.svg

The RSS axis is logarithmic: the servers compared differ by two orders of magnitude, and
on a linear axis the smaller ones would lie flat along the bottom.
"""
import json
import math
import sys

summary = json.load(open(sys.argv[1]))
W, H, L, R, T, B = 820, 430, 80, 220, 44, 52
servers = sorted({s["server"] for s in summary})
xmax = max(s["connections"] for s in summary)
mib = [s["rss_kib"] / 1024 for s in summary]
ylo = 10 ** math.floor(math.log10(min(mib)))
yhi = 10 ** math.ceil(math.log10(max(mib)))
sx = lambda x: L + x / xmax * (W - L - R)
sy = lambda y: H - B - (math.log10(y) - math.log10(ylo)) / (math.log10(yhi) - math.log10(ylo)) * (H - T - B)
colors = ["#2ca02c", "#1f77b4", "#d62728", "#9467bd", "#ff7f0e"]
svg = [
    '<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">' % (W, H),
    '<rect width="100%" height="100%" fill="white"/>',
    '<text x="%d" y="24" font-size="15">Server RSS against idle WebSocket connections (log scale)</text>' % L,
    '<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>' % (L, H - B, W - R, H - B),
    '<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>' % (L, T, L, H - B),
]
for i in range(6):
    x = xmax * i / 5
    svg.append('<text x="%.0f" y="%d" text-anchor="middle">%d</text>' % (sx(x), H - B + 18, round(x)))
decade = ylo
while decade <= yhi:
    for mult in (1, 2, 5):
        y = decade * mult
        if ylo <= y <= yhi:
            label = ("%g" % y) if mult == 1 else ""
            shade = "#ccc" if mult == 1 else "#eee"
            svg.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="%s"/>' % (L, sy(y), W - R, sy(y), shade))
            if label:
                svg.append('<text x="%d" y="%.1f" text-anchor="end">%s</text>' % (L - 6, sy(y) + 4, label))
    decade *= 10
svg.append('<text x="%d" y="%d" text-anchor="middle">idle connections</text>' % ((L + W - R) / 2, H - 12))
mid = (T + H - B) / 2
svg.append('<text x="18" y="%d" transform="rotate(-90 18 %d)" text-anchor="middle">RSS (MiB)</text>' % (mid, mid))
order = sorted(servers, key=lambda name: max(s["rss_kib"] for s in summary if s["server"] == name), reverse=True)
for i, server in enumerate(order):
    points = sorted((s["connections"], s["rss_kib"] / 1024, s["user_bytes_per_conn"]) for s in summary if s["server"] == server)
    color = colors[(len(order) - 1 - i) % len(colors)]
    path = " ".join("%.1f,%.1f" % (sx(x), sy(y)) for x, y, _ in points)
    svg.append('<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>' % (color, path))
    svg.extend('<circle cx="%.1f" cy="%.1f" r="3" fill="%s"/>' % (sx(x), sy(y), color) for x, y, _ in points)
    last = points[-1]
    legend_y = T + 12 + 34 * i
    svg.append('<rect x="%d" y="%d" width="14" height="4" fill="%s"/>' % (W - R + 14, legend_y - 4, color))
    svg.append('<text x="%d" y="%d">%s</text>' % (W - R + 34, legend_y, server))
    svg.append('<text x="%d" y="%d" fill="#555">%s B/conn at %d</text>' % (W - R + 34, legend_y + 15, format(last[2], ","), last[0]))
svg.append("</svg>")
open(sys.argv[2], "w").write("\n".join(svg) + "\n")
