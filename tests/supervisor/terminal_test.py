#!/usr/bin/env python3
"""The progress bar of a file run, through a real pseudo-terminal, and its absence without one.

usage: terminal_test.py FLOWSEAL_BINARY TEST_DATA_DIR [--sanitized]

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
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
import fcntl
import struct
import termios
import glob

FLOWSEAL = os.path.abspath(sys.argv[1])
DATA = os.path.abspath(sys.argv[2])
SANITIZED = "--sanitized" in sys.argv[3:]
CAPTURE = os.path.join(DATA, "sample.pcap")
# Passes over sample.pcap: long enough (~3 s on an idle machine) for several redraws at 4 Hz
# and a stats line every second; 1200 passes were over in under a second once the machine was idle.
LOOP = 1500 if SANITIZED else 6000
TIMEOUT = 240
BAR = re.compile(r"(\d+\.\d)% \[[#.]*\]  ([\d.]+(?: [kM])?) packets/s  (\d+:\d\d(?::\d\d)? left|--:-- left|draining)")
LOG_ROW = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3} \w+ [a-z]+(\[\d+\])?: ")

failures = []
checks = 0


def check(condition, what):
    global checks
    checks += 1
    if not condition:
        failures.append(what)
        print(f"FAIL: {what}", flush=True)
    return condition


def run_args(out, tag):
    return [FLOWSEAL, "run", "-r", CAPTURE, "-o", out,
            "--set", f"supervisor.instance=term{os.getpid()}-{tag}",
            "--set", f"capture.loop={LOOP}",
            "--set", "supervisor.stats_interval_s=1",
            "--budget", "16"]


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


def run_on_pty(out):
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
    p = subprocess.Popen(run_args(out, "pty"), stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
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


def test_terminal(tmp):
    code, text = run_on_pty(os.path.join(tmp, "pty"))
    check(code == 0, f"the run on a terminal exits 0 ({code}: {text[-1500:]!r})")
    draws = [m for m in BAR.finditer(text)]
    percents = [float(m.group(1)) for m in draws]
    print(f"   {len(draws)} bar draws: {percents[:3]} ... {percents[-3:]}", flush=True)
    check(len(draws) >= 4, f"the bar is drawn several times ({len(draws)})")
    in_place = re.findall(r"\r *" + BAR.pattern, text)
    check(len(in_place) == len(draws), f"every draw starts with a carriage return: redrawn in place "
                                       f"({len(in_place)} of {len(draws)})")
    check(percents == sorted(percents), f"the percentage never goes back ({percents})")
    check(any(0 < p < 100 for p in percents), f"the bar shows the run part-way ({percents})")
    check(percents and percents[-1] == 100.0, f"the percentage reaches 100 ({percents[-3:]})")
    check(any(re.fullmatch(r"\d+:\d\d left", m.group(3)) for m in draws),
          "a time-left field is shown")
    check(any(float(m.group(2).split()[0]) > 0 for m in draws), "a packets/s figure above 0 is shown")

    # Colours (the supervisor's own log lines on a terminal) do not move the cursor.
    rows, last = terminal_rows(re.sub(r"\x1b\[[0-9;]*m", "", text).replace("\r\n", "\n"))
    bar_rows = [r for r in rows if BAR.search(r)]
    check(not bar_rows, f"no row keeps a bar once a line is written below it ({bar_rows[:3]})")
    check(last == "", f"the bar is erased at the end (left: {last!r})")
    logs = [r for r in rows if LOG_ROW.match(r)]
    stages = {m.group(0).split()[2].rstrip(":").split("[")[0] for r in logs if (m := LOG_ROW.match(r))}
    check({"flowseal", "capture", "flowd", "writerd"} <= stages,
          f"log lines of the supervisor and of the stages stand on rows of their own ({sorted(stages)})")
    check(any("ready: every stage is up" in r for r in logs), "the ready line is a row of its own")
    stats = [r for r in rows if r.startswith("stats: packets rx=")]
    check(stats, "the stats lines are rows of their own")
    summary = [r for r in rows if r.startswith("flowseal run summary")]
    check(len(summary) == 1, "the run summary starts a row of its own")
    odd = [r for r in rows if r and not (LOG_ROW.match(r) or r.startswith(("stats:", "flowseal run summary", "  ")))]
    check(not odd, f"every row is a whole log line, stats line or summary line ({odd[:3]})")


def test_no_terminal(tmp):
    out = os.path.join(tmp, "pipe")
    r = subprocess.run(run_args(out, "pipe"), stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=TIMEOUT)
    text = r.stdout + r.stderr
    check(r.returncode == 0, f"the run without a terminal exits 0 ({r.returncode}: {text[-1500:]})")
    check("\r" not in text, "no carriage return without a terminal")
    check("\x1b" not in text, "no escape sequence without a terminal")
    check("packets/s " not in text and not BAR.search(text), "no progress bar without a terminal")
    check("flowseal run summary" in text and "ready: every stage is up" in text,
          "the log lines and the summary are there")


if __name__ == "__main__":
    started = time.time()
    tmp = tempfile.mkdtemp(prefix="flowseal-terminal-")
    try:
        for test in (test_terminal, test_no_terminal):
            print(f"-- {test.__name__}", flush=True)
            before = len(failures)
            t0 = time.time()
            try:
                test(tmp)
            except Exception as e:
                failures.append(f"{test.__name__}: {type(e).__name__}: {e}")
                print(f"FAIL: {test.__name__}: {type(e).__name__}: {e}", flush=True)
            print(f"   {'ok' if len(failures) == before else 'FAILED'} ({time.time() - t0:.1f} s)",
                  flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        for leftover in glob.glob(f"/dev/shm/flowseal.term{os.getpid()}-*"):
            os.remove(leftover)
    print(f"{checks - len(failures)} passed, {len(failures)} failed ({time.time() - started:.1f} s)")
    sys.exit(1 if failures else 0)
