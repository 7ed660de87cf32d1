"""The report: plots (gnuplot), medians and spread, machine facts, docs/PERFORMANCE.md."""
import os
import platform
import re
import shutil
import statistics

from .common import BEGIN_MARK, DOC, END_MARK, sh


def plot(timeline, plot_dir, tag):
    if not shutil.which("gnuplot"):
        return [], "gnuplot is not installed (apt-get install gnuplot-nox): no plots"
    os.makedirs(plot_dir, exist_ok=True)
    names = []
    for _, row in timeline:
        for k in row:
            if k not in names:
                names.append(k)
    data = os.path.join(plot_dir, f"{tag}-timeline.dat")
    prev = {}
    with open(data, "w") as f:
        f.write("# t_s then per stage: rate_per_s cpu_share pss_mib  (" + " ".join(names) + ")\n")
        for t, row in timeline:
            cols = [f"{t:.2f}"]
            for k in names:
                c, cpu, pss = row.get(k, (None, None, None))
                p = prev.get(k)
                if p and c is not None and cpu is not None and t > p[0]:
                    cols += [f"{(c - p[1]) / (t - p[0]):.0f}", f"{(cpu - p[2]) / (t - p[0]):.3f}"]
                else:
                    cols += ["NaN", "NaN"]
                cols.append(f"{pss / (1 << 20):.2f}" if pss else "NaN")
                if c is not None and cpu is not None:
                    prev[k] = (t, c, cpu)
            f.write(" ".join(cols) + "\n")
    files = []
    specs = [("throughput", "items/s (capture, flowd: packets; later stages: records)", 0, True),
             ("cpu", "CPU (cores)", 1, False), ("memory", "PSS (MiB)", 2, False)]
    for what, ylabel, off, log_scale in specs:
        png = os.path.join(plot_dir, f"{tag}-{what}.png")
        series = ", ".join(
            f"'{data}' using 1:{2 + 3 * i + off} with lines title '{n}'"
            for i, n in enumerate(names) if not (what == "throughput" and n == "supervisor"))
        script = (f"set terminal pngcairo size 900,420 font ',10'\nset output '{png}'\n"
                  f"set xlabel 'seconds since flowseal run'\nset ylabel '{ylabel}'\nset key outside right\n"
                  f"set grid\n{'set logscale y' if log_scale else ''}\nplot {series}\n")
        r = sh(["gnuplot"], input=script)
        if r.returncode == 0:
            files.append(png)
    os.remove(data)
    return files, None


# ------------------------------------------------------------------ report

def summarise(runs):
    keys = sorted({k for r in runs for k in r if not k.startswith("_") and
                   isinstance(r[k], (int, float)) and r[k] is not None})
    return {k: {"median": statistics.median(r[k] for r in runs if k in r and r[k] is not None),
                "min": min(r[k] for r in runs if k in r and r[k] is not None),
                "max": max(r[k] for r in runs if k in r and r[k] is not None)} for k in keys}


def fmt_num(v):
    if float(v).is_integer() and abs(v) < 1e6:
        return f"{int(v):,}"
    if abs(v) >= 1e6:
        return f"{v / 1e6:,.3f} M"
    if abs(v) >= 1e4:
        return f"{v:,.0f}"
    return f"{v:,.3f}"


def machine_facts():
    model = "?"
    try:
        m = re.search(r"model name\s*:\s*(.*)", open("/proc/cpuinfo").read())
        model = m.group(1) if m else "?"
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({model}), Linux {platform.release()}"


def write_doc_section(report):
    text = open(DOC).read()
    section = f"{BEGIN_MARK}\n{report}\n{END_MARK}"
    if BEGIN_MARK in text and END_MARK in text:
        a = text.index(BEGIN_MARK)
        b = text.index(END_MARK) + len(END_MARK)
        text = text[:a] + section + text[b:]
    else:
        text = text.rstrip() + "\n\n## Pipeline harness (benchmarks/run-pipeline)\n\n" + section + "\n"
    with open(DOC, "w") as f:
        f.write(text)
