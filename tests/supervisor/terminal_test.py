"""The progress bar of a file run, through a real pseudo-terminal, and its absence without one.

Run by meson: python3 -m pytest -q tests/supervisor/terminal_test.py (see tests/conftest.py).

On a terminal (stderr a pty of this test's own, 100 columns), `flowseal run -r` must show
a bar redrawn in place with `\\r`: a percentage that never goes back and reaches 100, a
packets/s figure and a time-left field; every log line (the supervisor's and the stages',
which then come through the supervisor) and the run summary must stand on rows of their
own, never sharing one with the bar, and the bar is gone at the end. The output is replayed
through a minimal terminal model (carriage return, erase to end of line, newline) to see
the rows as a person would.

Without a terminal (stderr a pipe) there is no bar at all: no carriage return, no escape
sequence, no "packets/s" field; only log lines and the summary.
"""
import fcntl
import os
import re
import select
import struct
import subprocess
import termios
import time

import pytest

TIMEOUT = 240
BAR = re.compile(r"(\d+\.\d)% \[[#.]*\]  ([\d.]+(?: [kM])?) packets/s  (\d+:\d\d(?::\d\d)? left|--:-- left|draining)")
LOG_ROW = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3} \w+ [a-z]+(\[\d+\])?: ")


@pytest.fixture(scope="module")
def run_args(flowseal, data_dir, sanitized, instance):
    # Passes over sample.pcap: long enough (~3 s on an idle machine) for several redraws at 4 Hz
    # and a stats line every second; 1200 passes were over in under a second once the machine
    # was idle.
    loop = 1500 if sanitized else 6000

    def args(out, tag):
        return [flowseal, "run", "-r", os.path.join(data_dir, "sample.pcap"), "-o", out,
                "--set", f"supervisor.instance={instance(tag)}",
                "--set", f"capture.loop={loop}",
                "--set", "supervisor.stats_interval_s=1",
                "--budget", "16"]
    return args


def terminal_rows(data):
    """What a terminal shows: committed rows (ended by a newline) and the row left at the end."""
    rows, row, col, i = [], [], 0, 0
    while i < len(data):
        c = data[i]
        if c == "\r":
            col = 0
        elif c == "\n":
            rows.append("".join(row).rstrip())
            row, col = [], 0
        elif data.startswith("\x1b[K", i):
            del row[col:]
            i += 3
            continue
        else:
            if col < len(row):
                row[col] = c
            else:
                row.append(c)
            col += 1
        i += 1
    return rows, "".join(row).rstrip()


def run_on_pty(args):
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
    p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    os.close(slave)
    chunks = []
    deadline = time.time() + TIMEOUT
    try:
        while time.time() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if p.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every holder of the slave side is gone
                break
            if not data:
                break
            chunks.append(data)
        code = p.wait(max(1, deadline - time.time()))
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        os.close(master)
    return code, b"".join(chunks).decode(errors="replace")


def test_on_a_terminal_the_bar_is_redrawn_in_place_and_log_lines_keep_their_own_rows(
        tmp_path, run_args):
    code, text = run_on_pty(run_args(str(tmp_path / "pty"), "pty"))
    assert code == 0, f"the run on a terminal exits 0 ({code}: {text[-1500:]!r})"
    draws = [m for m in BAR.finditer(text)]
    percents = [float(m.group(1)) for m in draws]
    print(f"   {len(draws)} bar draws: {percents[:3]} ... {percents[-3:]}", flush=True)
    assert len(draws) >= 4, f"the bar is drawn several times ({len(draws)})"
    in_place = re.findall(r"\r *" + BAR.pattern, text)
    assert len(in_place) == len(draws), \
        (f"every draw starts with a carriage return: redrawn in place "
         f"({len(in_place)} of {len(draws)})")
    assert percents == sorted(percents), f"the percentage never goes back ({percents})"
    assert any(0 < p < 100 for p in percents), f"the bar shows the run part-way ({percents})"
    assert percents and percents[-1] == 100.0, f"the percentage reaches 100 ({percents[-3:]})"
    assert any(re.fullmatch(r"\d+:\d\d left", m.group(3)) for m in draws), \
        "a time-left field is shown"
    assert any(float(m.group(2).split()[0]) > 0 for m in draws), \
        "a packets/s figure above 0 is shown"

    # Colours (the supervisor's own log lines on a terminal) do not move the cursor.
    rows, last = terminal_rows(re.sub(r"\x1b\[[0-9;]*m", "", text).replace("\r\n", "\n"))
    bar_rows = [r for r in rows if BAR.search(r)]
    assert not bar_rows, f"no row keeps a bar once a line is written below it ({bar_rows[:3]})"
    assert last == "", f"the bar is erased at the end (left: {last!r})"
    logs = [r for r in rows if LOG_ROW.match(r)]
    stages = {m.group(0).split()[2].rstrip(":").split("[")[0] for r in logs if (m := LOG_ROW.match(r))}
    assert {"flowseal", "capture", "flowd", "writerd"} <= stages, \
        f"log lines of the supervisor and of the stages stand on rows of their own ({sorted(stages)})"
    assert any("ready: every stage is up" in r for r in logs), "the ready line is a row of its own"
    stats = [r for r in rows if r.startswith("stats: packets rx=")]
    assert stats, "the stats lines are rows of their own"
    summary = [r for r in rows if r.startswith("flowseal run summary")]
    assert len(summary) == 1, "the run summary starts a row of its own"
    odd = [r for r in rows if r and not (LOG_ROW.match(r) or r.startswith(("stats:", "flowseal run summary", "  ")))]
    assert not odd, f"every row is a whole log line, stats line or summary line ({odd[:3]})"


def test_without_a_terminal_there_is_no_bar(tmp_path, run_args):
    out = str(tmp_path / "pipe")
    r = subprocess.run(run_args(out, "pipe"), stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=TIMEOUT)
    text = r.stdout + r.stderr
    assert r.returncode == 0, \
        f"the run without a terminal exits 0 ({r.returncode}: {text[-1500:]})"
    assert "\r" not in text, "no carriage return without a terminal"
    assert "\x1b" not in text, "no escape sequence without a terminal"
    assert "packets/s " not in text and not BAR.search(text), "no progress bar without a terminal"
    assert "flowseal run summary" in text and "ready: every stage is up" in text, \
        "the log lines and the summary are there"
