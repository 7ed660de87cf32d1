"""A small SVG plot of a soak (no matplotlib on the machines this runs on): PSS, private PSS
(Pss_Anon) and open fds of every process over time, one line per process name (a stage's
successive processes continue its line, broken where one process replaces another), with the
disturbances marked (kills red, operator restarts blue)."""
import html

COLOURS = {"supervisor": "#000000", "capture": "#1f77b4", "flowd[0]": "#ff7f0e",
           "flowd[1]": "#2ca02c", "dedupd": "#d62728", "signerd": "#9467bd",
           "writerd": "#8c564b"}
WIDTH, PANEL_H, LEFT, RIGHT, TOP, GAP = 960, 200, 70, 130, 40, 50


def _lines(samples, key, scale):
    """name -> list of runs [(t, value)], a new run wherever the process (pid) changes."""
    out = {}
    last_pid = {}
    for s in samples:
        for pid, p in s.procs.items():
            name = p["name"]
            value = p.get(key)
            if value is None:
                continue
            runs = out.setdefault(name, [])
            if last_pid.get(name) != pid or not runs:
                runs.append([])
                last_pid[name] = pid
            runs[-1].append((s.t, value / scale))
    return out


def _panel(parts, y0, title, unit, lines, t_max, events):
    """One panel; `events` marked along its top (the first panel's only: the file stays
    small)."""
    v_max = max((v for runs in lines.values() for run in runs for _, v in run), default=1) * 1.1
    v_max = v_max or 1
    plot_w = WIDTH - LEFT - RIGHT

    def x(t):
        return LEFT + plot_w * t / t_max

    def y(v):
        return y0 + PANEL_H - PANEL_H * v / v_max
    parts.append(f'<text x="{LEFT}" y="{y0 - 8}" font-size="13">{html.escape(title)}</text>')
    parts.append(f'<rect x="{LEFT}" y="{y0}" width="{plot_w}" height="{PANEL_H}" '
                 f'fill="none" stroke="#888"/>')
    for i in range(5):
        v = v_max * i / 4
        parts.append(f'<text x="{LEFT - 6}" y="{y(v) + 4:.1f}" font-size="10" '
                     f'text-anchor="end">{v:.1f}</text>')
        parts.append(f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{y(v):.1f}" y2="{y(v):.1f}" '
                     f'stroke="#eee"/>')
    parts.append(f'<text x="14" y="{y0 + PANEL_H / 2}" font-size="11" '
                 f'transform="rotate(-90 14 {y0 + PANEL_H / 2})">{html.escape(unit)}</text>')
    for t, what, _, outcome in events:
        ok = "SIGKILLed" in outcome or "restarted: pid" in outcome
        if ok:
            colour = "#d62728" if what == "kill" else "#1f77b4"
            parts.append(f'<path d="M{x(t):.0f} {y0}v6" stroke="{colour}"/>')
    for name, runs in sorted(lines.items()):
        colour = COLOURS.get(name, "#7f7f7f")
        for run in runs:
            pts = " ".join(f"{x(t):.0f},{y(v):.0f}" for t, v in run)
            parts.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" '
                         f'stroke-width="1"/>')


def write_svg(samples, events, path, title, most_points=600):
    """The plot of `samples` into `path`; at most `most_points` samples per line (every n-th
    sample of a long run: the file stays small)."""
    step = -(-len(samples) // most_points) if samples else 1
    samples = samples[::step]
    t_max = max((s.t for s in samples), default=1) or 1
    panels = [("PSS per process", "MiB", "pss", 1 << 20),
              ("private PSS (Pss_Anon) per process", "MiB", "anon", 1 << 20),
              ("open fds per process", "fds", "fds", 1)]
    height = TOP + len(panels) * (PANEL_H + GAP) + 30
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
             f'font-family="sans-serif">',
             f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
             f'<text x="{LEFT}" y="18" font-size="14" font-weight="bold">'
             f'{html.escape(title)}</text>']
    for i, (name, unit, key, scale) in enumerate(panels):
        y0 = TOP + 12 + i * (PANEL_H + GAP)
        _panel(parts, y0, name, unit, _lines(samples, key, scale), t_max, events if i == 0 else [])
    y_axis = TOP + 12 + len(panels) * (PANEL_H + GAP) - GAP + 16
    for i in range(6):
        t = t_max * i / 5
        xx = LEFT + (WIDTH - LEFT - RIGHT) * t / t_max
        parts.append(f'<text x="{xx:.1f}" y="{y_axis}" font-size="10" '
                     f'text-anchor="middle">{t / 60:.1f} min</text>')
    for i, (name, colour) in enumerate(COLOURS.items()):
        yy = TOP + 20 + i * 16
        parts.append(f'<line x1="{WIDTH - RIGHT + 10}" x2="{WIDTH - RIGHT + 30}" y1="{yy}" '
                     f'y2="{yy}" stroke="{colour}" stroke-width="2"/>')
        parts.append(f'<text x="{WIDTH - RIGHT + 34}" y="{yy + 4}" font-size="11">'
                     f'{html.escape(name)}</text>')
    yy = TOP + 20 + len(COLOURS) * 16 + 8
    parts.append(f'<text x="{WIDTH - RIGHT + 10}" y="{yy}" font-size="10" fill="#d62728">'
                 f'| kill</text>')
    parts.append(f'<text x="{WIDTH - RIGHT + 10}" y="{yy + 14}" font-size="10" '
                 f'fill="#1f77b4">| restart</text>')
    parts.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(parts) + "\n")
