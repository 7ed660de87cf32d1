"""Per-stage hard memory limits through the real binaries.

Run by meson: python3 -m pytest -q tests/pressure/limit_test.py (see tests/conftest.py).

One offline run (loop mode over sample.pcap, dedup on) with dedupd's limit set far below
what any process holds (memory.dedupd_limit_mb = 0.1) and memory sampled every 100 ms: every
sample finds dedupd over its limit, so it is restarted again and again while the run goes
on. Checked, from the run's own output, `flowseal status --json` while it runs, and the store:
  - each restart is logged naming the stage, its private memory, the limit and the key
    (`dedupd (pid P) holds X MiB of private memory, over its limit of 0.1 MiB
    (memory.dedupd_limit_mb; PSS Y MiB): restarting it`), and each replacement too;
  - `status --json` counts them for dedupd (memory_limit_restarts) and for no other stage;
  - the run summary counts as many memory-limit restarts for dedupd as the log has, and
    none for any other stage;
  - the run exits 0, the store verifies, and its packet/byte/flow totals equal those of an
    undisturbed run of the same input (which, with the default limits, restarts nothing).
In a sanitizer build the stages' private memory is the sanitizer's, so only the first test
(the default limits are off: no restart in the undisturbed run) runs there.
"""
import json
import os
import re
import subprocess
import threading
import time

import pytest

TIMEOUT = 240


@pytest.fixture(scope="module")
def run_args(flowseal, data_dir, sanitized, instance):
    loop = 300 if sanitized else 2500  # 1-2 s of work on an idle machine: a dozen samples or more

    def args(out, tag, extra=()):
        return [flowseal, "run", "-r", os.path.join(data_dir, "sample.pcap"), "-o", out,
                "--set", f"supervisor.instance={instance(tag)}",
                "--set", f"capture.loop={loop}", "--set", "supervisor.stats_interval_s=0",
                "--set", "seal.batch_records=64", "--set", "seal.batch_ms=5",
                "--budget", "16"] + list(extra)
    return args


def totals(flowseal, out):
    """Packets, IP bytes, payload bytes and flows of the store, each flow counted once."""
    r = subprocess.run([flowseal, "cat", out, "--events"], capture_output=True, text=True,
                       timeout=TIMEOUT)
    assert r.returncode == 0, f"cat {out} exits 0 ({r.stderr[-500:]})"
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


def verify(flowseal, out):
    v = subprocess.run([flowseal, "verify", out], capture_output=True, text=True, timeout=TIMEOUT)
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


@pytest.fixture(scope="module")
def calm_run(module_tmp, run_args):
    """The undisturbed run: its store and its output."""
    calm = os.path.join(module_tmp, "calm")
    r = subprocess.run(run_args(calm, "calm"), capture_output=True, text=True, timeout=TIMEOUT)
    return calm, r


def test_with_the_default_limits_no_stage_is_restarted(calm_run):
    _, r = calm_run
    assert r.returncode == 0, f"the undisturbed run exits 0 ({r.returncode}: {r.stderr[-1500:]})"
    calm_stages = summary_stages(r.stderr)
    assert len(calm_stages) == 5 and all(v == (0, 0) for v in calm_stages.values()), \
        f"with the default limits nothing is restarted ({calm_stages})"
    assert "over its limit" not in r.stderr, "with the default limits no stage goes over"


def test_a_stage_over_its_limit_is_restarted_and_the_run_stores_the_same_totals(
        calm_run, module_tmp, run_args, flowseal, instance, sanitized):
    if sanitized:
        pytest.skip("sanitized build: this needs the stages' own private memory")
    calm, calm_result = calm_run
    assert calm_result.returncode == 0, "the undisturbed run exits 0"
    ok, why = verify(flowseal, calm)
    assert ok, f"the undisturbed store verifies ({why})"
    want = totals(flowseal, calm)

    out = os.path.join(module_tmp, "limited")
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
                s = subprocess.run([flowseal, "status", "--json", "--instance", instance("limited")],
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
    assert p.returncode == 0, \
        f"the run with a tiny dedupd limit completes ({p.returncode}: {text[-2000:]})"
    over = re.findall(r"dedupd \(pid \d+\) holds ([\d.]+) MiB of private memory, over its limit of "
                      r"0\.1 MiB \(memory\.dedupd_limit_mb; PSS ([\d.]+) MiB\): restarting it", text)
    replaced = re.findall(r"dedupd restarted after going over its memory limit \(pid \d+, ", text)
    print(f"   {len(over)} limit restarts of dedupd, e.g. {over[:2]}", flush=True)
    assert len(over) >= 2, \
        f"dedupd is restarted for its limit, the log naming the numbers ({len(over)})"
    assert all(float(x) > 0.1 for x, _ in over), "each logged private figure is over the limit"
    # The last request may meet a dedupd that has just drained: it leaves with exit 0 and,
    # the input being done, is not replaced (the supervisor's rule for any clean exit).
    assert len(over) - 1 <= len(replaced) <= len(over), \
        (f"each such restart is followed by a replacement, but for one that meets the end of "
         f"the input ({len(replaced)} of {len(over)})")
    others = re.findall(r"(capture|flowd\[\d+\]|signerd|writerd) \(pid \d+\) holds", text)
    assert not others, f"no other stage is restarted for memory ({others[:3]})"
    assert status is not None, "status --json answered while the run was busy"
    by_stage = {s["stage"]: s for s in status["stages"]}
    assert by_stage["dedupd"]["memory_limit_restarts"] >= 1, \
        f"status counts dedupd's memory-limit restarts ({by_stage['dedupd']})"
    assert all(s["memory_limit_restarts"] == 0 for n, s in by_stage.items() if n != "dedupd"), \
        "status counts none for the other stages"
    stages = summary_stages(text)
    assert stages.get("dedupd", (0, 0))[0] == len(replaced) and stages["dedupd"][1] == len(replaced), \
        f"the summary counts dedupd's memory-limit restarts ({stages.get('dedupd')} vs {len(replaced)} in the log)"
    assert all(v == (0, 0) for k, v in stages.items() if k != "dedupd"), \
        f"the summary counts no restart of another stage ({stages})"
    ok, why = verify(flowseal, out)
    assert ok, f"the store of the run with restarts verifies ({why})"
    got = totals(flowseal, out)
    assert got == want, f"packet/byte/flow totals equal the undisturbed run's ({got} vs {want})"
