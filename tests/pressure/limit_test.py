#!/usr/bin/env python3
"""Per-stage hard memory limits through the real binaries.

usage: limit_test.py FLOWSEAL_BINARY TEST_DATA_DIR [--sanitized]

One offline run (loop mode over sample.pcap, dedup on) with dedupd's limit set far below
what any process holds (memory.dedupd_limit_mb = 0.1) and memory sampled every 100 ms: every
sample finds dedupd over its limit, so it is restarted again and again while the run goes
on. Checks, from the run's own output, `flowseal status --json` while it runs, and the store:
  - each restart is logged naming the stage, its private memory, the limit and the key
    (`dedupd (pid P) holds X MiB of private memory, over its limit of 0.1 MiB
    (memory.dedupd_limit_mb; PSS Y MiB): restarting it`), and each replacement too;
  - `status --json` counts them for dedupd (memory_limit_restarts) and for no other stage;
  - the run summary counts as many memory-limit restarts for dedupd as the log has, and
    none for any other stage;
  - the run exits 0, the store verifies, and its packet/byte/flow totals equal those of an
    undisturbed run of the same input (which, with the default limits, restarts nothing).
With --sanitized the stages' private memory is the sanitizer's, so this only checks that
the default limits are off (no restart in the undisturbed run) and skips the rest.
"""
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

FLOWSEAL = os.path.abspath(sys.argv[1])
DATA = os.path.abspath(sys.argv[2])
SANITIZED = "--sanitized" in sys.argv[3:]
CAPTURE = os.path.join(DATA, "sample.pcap")
LOOP = 300 if SANITIZED else 2500  # 1-2 s of work on an idle machine: a dozen samples or more
TIMEOUT = 240

failures = []
checks = 0


def check(condition, what):
    global checks
    checks += 1
    if not condition:
        failures.append(what)
        print(f"FAIL: {what}", flush=True)
    return condition


def instance(tag):
    return f"lim{os.getpid()}-{tag}"


def run_args(out, tag, extra=()):
    return [FLOWSEAL, "run", "-r", CAPTURE, "-o", out, "--set", f"supervisor.instance={instance(tag)}",
            "--set", f"capture.loop={LOOP}", "--set", "supervisor.stats_interval_s=0",
            "--set", "seal.batch_records=64", "--set", "seal.batch_ms=5",
            "--budget", "16"] + list(extra)


def totals(out):
    """Packets, IP bytes, payload bytes and flows of the store, each flow counted once."""
    r = subprocess.run([FLOWSEAL, "cat", out, "--events"], capture_output=True, text=True, timeout=TIMEOUT)
    check(r.returncode == 0, f"cat {out} exits 0 ({r.stderr[-500:]})")
    t = [0, 0, 0, 0]
    for line in r.stdout.splitlines():
        if not line.strip():
            continue
        e = json.loads(line)
        if e["event"] in ("end", "summary"):
            t[0] += e["orig_pkts"] + e["resp_pkts"]
            t[1] += e["orig_ip_bytes"] + e["resp_ip_bytes"]
            t[2] += e["orig_bytes"] + e["resp_bytes"]
            t[3] += max(1, e["flow_count"]) if e["event"] == "summary" else 1
    return tuple(t)


def verify(out):
    v = subprocess.run([FLOWSEAL, "verify", out], capture_output=True, text=True, timeout=TIMEOUT)
    return v.returncode == 0, (v.stdout + v.stderr)[-1000:]


def summary_stages(text):
    """{stage: (memory-limit restarts, restarts)} from the summary's `stages` line."""
    line = next((l for l in text.splitlines() if l.strip().startswith("stages")), "")
    found = {}
    for part in line.split(";"):
        m = re.match(r"\s*(?:stages\s+)?([a-z]+)(?:\[\d+\])? cpu .*? private [\d.]+ \w+"
                     r"(?: memory-limit restarts (\d+))?(?: restarts (\d+))?\s*$", part)
        if m:
            found[m.group(1)] = (int(m.group(2) or 0), int(m.group(3) or 0))
    return found


def test_limits(tmp):
    calm = os.path.join(tmp, "calm")
    r = subprocess.run(run_args(calm, "calm"), capture_output=True, text=True, timeout=TIMEOUT)
    check(r.returncode == 0, f"the undisturbed run exits 0 ({r.returncode}: {r.stderr[-1500:]})")
    calm_stages = summary_stages(r.stderr)
    check(len(calm_stages) == 5 and all(v == (0, 0) for v in calm_stages.values()),
          f"with the default limits nothing is restarted ({calm_stages})")
    check("over its limit" not in r.stderr, "with the default limits no stage goes over")
    if SANITIZED:
        print("   sanitized build: the rest needs the stages' own private memory", flush=True)
        return
    ok, why = verify(calm)
    check(ok, f"the undisturbed store verifies ({why})")
    want = totals(calm)

    out = os.path.join(tmp, "limited")
    p = subprocess.Popen(run_args(out, "limited", ["--set", "memory.dedupd_limit_mb=0.1",
                                                   "--set", "memory.sample_ms=100",
                                                   "--set", "supervisor.max_restarts=100000"]),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    reader = threading.Thread(target=lambda: [lines.append(l) for l in p.stdout], daemon=True)
    reader.start()
    status = None
    try:
        deadline = time.time() + 60
        while time.time() < deadline and p.poll() is None:
            if "restarted after going over its memory limit" in "".join(lines):
                s = subprocess.run([FLOWSEAL, "status", "--json", "--instance", instance("limited")],
                                   capture_output=True, text=True, timeout=30)
                if s.returncode == 0:
                    status = json.loads(s.stdout)
                    break
            time.sleep(0.05)
        p.wait(TIMEOUT)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        reader.join(10)
    text = "".join(lines)
    check(p.returncode == 0, f"the run with a tiny dedupd limit completes ({p.returncode}: {text[-2000:]})")
    over = re.findall(r"dedupd \(pid \d+\) holds ([\d.]+) MiB of private memory, over its limit of "
                      r"0\.1 MiB \(memory\.dedupd_limit_mb; PSS ([\d.]+) MiB\): restarting it", text)
    replaced = re.findall(r"dedupd restarted after going over its memory limit \(pid \d+, ", text)
    print(f"   {len(over)} limit restarts of dedupd, e.g. {over[:2]}", flush=True)
    check(len(over) >= 2, f"dedupd is restarted for its limit, the log naming the numbers ({len(over)})")
    check(all(float(x) > 0.1 for x, _ in over), "each logged private figure is over the limit")
    # The last request may meet a dedupd that has just drained: it leaves with exit 0 and,
    # the input being done, is not replaced (the supervisor's rule for any clean exit).
    check(len(over) - 1 <= len(replaced) <= len(over),
          f"each such restart is followed by a replacement, but for one that meets the end of "
          f"the input ({len(replaced)} of {len(over)})")
    others = re.findall(r"(capture|flowd\[\d+\]|signerd|writerd) \(pid \d+\) holds", text)
    check(not others, f"no other stage is restarted for memory ({others[:3]})")
    if check(status is not None, "status --json answered while the run was busy"):
        by_stage = {s["stage"]: s for s in status["stages"]}
        check(by_stage["dedupd"]["memory_limit_restarts"] >= 1,
              f"status counts dedupd's memory-limit restarts ({by_stage['dedupd']})")
        check(all(s["memory_limit_restarts"] == 0 for n, s in by_stage.items() if n != "dedupd"),
              "status counts none for the other stages")
    stages = summary_stages(text)
    check(stages.get("dedupd", (0, 0))[0] == len(replaced) and stages["dedupd"][1] == len(replaced),
          f"the summary counts dedupd's memory-limit restarts ({stages.get('dedupd')} vs {len(replaced)} in the log)")
    check(all(v == (0, 0) for k, v in stages.items() if k != "dedupd"),
          f"the summary counts no restart of another stage ({stages})")
    ok, why = verify(out)
    check(ok, f"the store of the run with restarts verifies ({why})")
    got = totals(out)
    check(got == want, f"packet/byte/flow totals equal the undisturbed run's ({got} vs {want})")


if __name__ == "__main__":
    started = time.time()
    tmp = tempfile.mkdtemp(prefix="flowseal-limit-")
    try:
        print("-- test_limits", flush=True)
        try:
            test_limits(tmp)
        except Exception as e:
            failures.append(f"test_limits: {type(e).__name__}: {e}")
            print(f"FAIL: test_limits: {type(e).__name__}: {e}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        for leftover in glob.glob(f"/dev/shm/flowseal.lim{os.getpid()}-*"):
            os.remove(leftover)
    print(f"{checks - len(failures)} passed, {len(failures)} failed ({time.time() - started:.1f} s)")
    sys.exit(1 if failures else 0)
