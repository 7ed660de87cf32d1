#!/usr/bin/env python3
"""The soak (issue 13, item 7): a loop-mode run disturbed every few seconds, sampled every second.

One `flowseal run` over a capture in loop mode (capture.loop rewrites addresses per pass, so
every pass's flows are new) is disturbed for the chosen duration: every few seconds (a seeded
RNG: the seed is printed, and `--seed` replays the same choices and gaps) one stage process is
SIGKILLed by PID (PIDs read from `flowseal status --json`, and checked to be children of the
supervisor this script started) or an operator's `flowseal restart STAGE` is sent. After the
duration the run goes on undisturbed to the end of its input. Meanwhile every second:

- `flowseal status --json`: the packet ledger (below) and the stage PIDs;
- per process (the supervisor and every stage): PSS, Pss_Anon and Pss_Shmem from
  /proc/PID/smaps_rollup and the number of open fds (/proc/PID/fd).

The ledger checks, per sample k, with R = capture's `in_total` (received), P = capture's
`out_total` (published), F = the sum of every flowd[i]'s `in_total` (processed: in flows + not
IP + malformed), S = `drops.sampled_out`, D = `drops.ring_full` + `drops.kernel`:

  pending_k = R_k - P_k - S_k - D_k, within [-(4096 + B), B], B = shards x capture.batch_packets
      capture stores R every 4096 packets it reads and P at every flush, and holds at most B
      packets read and not yet published; a restarted capture starts R at P again;
  F_k <= P_(k+1)   (the next sample's P is read after this sample's F: flowd never applied
      more packets than capture had published, restarts or not; exact, no tolerance)
  P and every drop counter never go back (a restarted capture resumes at what it published).

F is not monotone on purpose: flowd's counters are committed with its flow table steps, and a
killed flowd's open step is undone (and applied again by its successor). At the end the run
summary's exact ledger is checked: received = processed + sampled out + dropped, and received
equals the undisturbed run's.

Then `flowseal verify` of the store, and the flows against an undisturbed run of the same input
(run at the same time, another instance): with dedup off the multiset of every stored record
(the whole `cat --events --format tsv` line) must be the same; with dedup on, the flows, packets
and bytes over end and summary records, each event id counted once. Both are compared as
bucketed sums of 64-bit record hashes, streamed, so a long run's tens of millions of records
need no sort and no memory; the records of buckets that differ are then printed.

Memory and fds after warm-up (see check_memory / check_fds): the private part of PSS
(Pss_Anon) of every process that lives long enough to judge grows less than a bound scaled
from 1 MiB per 10 minutes (memory_bound); the processes' shared-memory PSS adds up to no more
than the instance's shared-memory objects; PSS, its parts and their growth per process are
reported (and plotted); the fd count is constant per process (transients of a few samples
aside) and the same in every process of one stage.

Replay: the seed fixes the gaps, the choice of kill or restart and which stage, not what the
pipeline is doing at that moment (that depends on the machine's load).

CLI:  soak.py --flowseal build/supervisor/flowseal --minutes 30 --plot docs/img/soak.svg
The pytest test (test_soak.py) runs a 75-second version in ./run-tests.
"""
import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "supervisor"))
from runlog import LoggedRun, remove_instance_shm  # noqa: E402

STAGES = ["capture", "flowd", "dedupd", "signerd", "writerd"]
PACKETS_PER_READ = 4096  # capture stores `received` once per this many packets read
BATCH_PACKETS = 256      # capture.batch_packets (the default, set explicitly below)
BUCKETS = 4096           # buckets of the record-hash comparison
MIB = 1 << 20


@dataclass
class SoakConfig:
    flowseal: str
    capture: str
    workdir: str
    seed: int
    duration_s: float            # how long the disturbances go on (the run may end earlier)
    loop: int = 0                # passes; 0: calibrated to `work_factor` x duration
    work_factor: float = 0.5     # the input an undisturbed run would need this share of duration for
    dedup: bool = False
    shards: int = 2
    budget_mb: int = 64
    gap_s: tuple = (1.5, 4.5)    # seconds between disturbances, uniform
    restart_share: float = 0.3   # share of disturbances that are `flowseal restart STAGE`
    warmup_s: float = 20.0       # after the first disturbance: memory and fds not judged yet
    process_warmup_s: float = 5.0  # a process's own first seconds: not judged either
    timeout_s: float = 3600.0    # any single run's bound (only hit if it hangs)
    spare: tuple = ()            # stages never disturbed (e.g. capture: see RELIABILITY.md)
    say: object = print


@dataclass
class Sample:
    t: float                     # seconds since the soak began
    ledger: dict                 # ledger_of(`status --json`)
    procs: dict = field(default_factory=dict)  # pid -> {name, age, pss, anon, shmem, fds}


def run_args(cfg, instance, out, loop):
    return [cfg.flowseal, "run", "-r", cfg.capture, "-o", out, "--instance", instance,
            "--budget", str(cfg.budget_mb),
            "--set", f"capture.loop={loop}",
            "--set", f"capture.batch_packets={BATCH_PACKETS}",
            "--set", f"dedup.enabled={'true' if cfg.dedup else 'false'}",
            "--set", f"flowd.shards={cfg.shards}",
            "--set", "supervisor.stats_interval_s=0",
            "--set", "supervisor.max_restarts=1000000",
            # The machine's memory (other work on it) must not make capture sample flows out:
            # the stored flows are compared with an undisturbed run's.
            "--set", "memory.system_pressure=false"]


def start_run(cfg, instance, out, loop):
    return LoggedRun(run_args(cfg, instance, out, loop), timeout=cfg.timeout_s)


def finish(run, timeout):
    """Waits for the run's end (killed if it does not come); returns its exit code."""
    try:
        run.p.wait(timeout)
    except subprocess.TimeoutExpired:
        run.p.kill()
        run.p.wait()
        raise AssertionError(f"the run did not end within {timeout:.0f} s:\n{run.text()[-3000:]}")
    run.search(r"accounting received", 10)  # the reader thread has the summary's last line
    return run.p.returncode


# ---------------------------------------------------------------------------- /proc


def proc_stat(pid):
    """(state, ppid, start time in clock ticks) of `pid`, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[0], int(fields[1]), int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def is_child(pid, parent):
    st = proc_stat(pid)
    return st is not None and st[0] != "Z" and st[1] == parent


def smaps_rollup(pid):
    """PSS, Pss_Anon and Pss_Shmem of `pid` in bytes (None once it is gone)."""
    want = {"Pss:": "pss", "Pss_Anon:": "anon", "Pss_Shmem:": "shmem"}
    out = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                parts = line.split()
                if parts and parts[0] in want:
                    out[want[parts[0]]] = int(parts[1]) * 1024
    except (OSError, ValueError):
        return None
    return out if "pss" in out else None


def fd_count(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def child_count(pid):
    """Children of `pid`, zombies too (the supervisor holds a pidfd per child until it has
    reaped it)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return len(f.read().split())
    except OSError:
        return None


def shm_bytes(instance):
    """Total size of the instance's shared-memory objects (fixed by the plan at start)."""
    total = 0
    for name in os.listdir("/dev/shm"):
        if name.startswith(f"flowseal.{instance}."):
            try:
                total += os.stat(os.path.join("/dev/shm", name)).st_size
            except OSError:
                pass
    return total


def status(cfg, instance):
    """`status --json` as a dict, None while the instance is not there (or is gone)."""
    try:
        s = subprocess.run([cfg.flowseal, "status", "--instance", instance, "--json"],
                           capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return None
    if s.returncode != 0:
        return None
    try:
        return json.loads(s.stdout)
    except ValueError:
        return None


def stage_of(name):
    """'flowd[1]' -> 'flowd'."""
    return name.split("[", 1)[0]


# ---------------------------------------------------------------------------- sampling


class Sampler(threading.Thread):
    """Once a second: status and every process's PSS and fds, until stopped or the run ends."""

    def __init__(self, cfg, instance, run, t0):
        super().__init__(daemon=True)
        self.cfg, self.instance, self.run_, self.t0 = cfg, instance, run, t0
        self.samples = []
        self.stop_event = threading.Event()
        self.starts = {}  # pid -> monotonic time it was first seen (its age is from there)
        self.shm_size = 0  # bytes of the instance's shared-memory objects
        self.log = open(os.path.join(cfg.workdir, "samples.jsonl"), "w")

    def run(self):
        while not self.stop_event.is_set() and self.run_.p.poll() is None:
            began = time.monotonic()
            st = status(self.cfg, self.instance)
            if st is not None and self.run_.p.poll() is None:
                self.take(st)
            self.stop_event.wait(max(0.0, 1.0 - (time.monotonic() - began)))
        self.log.close()

    def take(self, st):
        now = time.monotonic()
        sample = Sample(round(now - self.t0, 2), ledger_of(st))
        targets = [(self.run_.p.pid, "supervisor")] + [
            (s["pid"], s["stage"]) for s in st["stages"] if s["pid"] > 0]
        for pid, name in targets:
            if pid != self.run_.p.pid and not is_child(pid, self.run_.p.pid):
                continue  # gone (killed, restarting) since status read it
            before = child_count(pid) if name == "supervisor" else None
            mem, fds = smaps_rollup(pid), fd_count(pid)
            if mem is None or fds is None:
                continue
            self.starts.setdefault(pid, now)
            sample.procs[pid] = dict(name=name, age=round(now - self.starts[pid], 2),
                                     fds=fds, **mem)
            if before is not None and child_count(pid) == before:
                sample.procs[pid]["children"] = before
        self.shm_size = max(self.shm_size, shm_bytes(self.instance))
        self.samples.append(sample)
        self.log.write(json.dumps({"t": sample.t, "procs": sample.procs,
                                   "ledger": sample.ledger, "shm": self.shm_size}) + "\n")
        self.log.flush()


# ---------------------------------------------------------------------------- disturbing


class Disturber:
    """SIGKILLs a random stage process, or asks for `flowseal restart STAGE`, every few
    seconds (seeded), until `duration_s` has passed or the run ended."""

    def __init__(self, cfg, instance, run, t0, rng):
        self.cfg, self.instance, self.run_, self.t0, self.rng = cfg, instance, run, t0, rng
        self.events = []  # (t, what, target, outcome)

    def go(self):
        while time.monotonic() - self.t0 < self.cfg.duration_s:
            try:
                self.run_.p.wait(self.rng.uniform(*self.cfg.gap_s))  # an event: the run ended
                return
            except subprocess.TimeoutExpired:
                pass
            if self.rng.random() < self.cfg.restart_share:
                self.restart(self.rng.choice([s for s in STAGES if s not in self.cfg.spare]))
            else:
                self.kill(self.rng.randrange(1 << 30))

    def note(self, what, target, outcome):
        t = round(time.monotonic() - self.t0, 2)
        self.events.append((t, what, target, outcome))
        with open(os.path.join(self.cfg.workdir, "events.jsonl"), "a") as f:
            f.write(json.dumps([t, what, target, outcome]) + "\n")
        self.cfg.say(f"  {t:8.2f} s  {what:7s} {target:10s} {outcome}")

    def kill(self, pick):
        st = status(self.cfg, self.instance)
        if st is None:
            self.note("kill", "-", "no status (the run is ending)")
            return
        procs = [s for s in st["stages"]
                 if s["pid"] > 0 and stage_of(s["stage"]) not in self.cfg.spare]
        target = procs[pick % len(procs)]
        pid, name = target["pid"], target["stage"]
        # Only a process this soak started: a child of its supervisor, alive now.
        if not is_child(pid, self.run_.p.pid):
            self.note("kill", name, f"pid {pid} gone already (restarting): skipped")
            return
        os.kill(pid, signal.SIGKILL)
        self.note("kill", name, f"pid {pid} SIGKILLed")

    def restart(self, stage):
        r = subprocess.run([self.cfg.flowseal, "restart", stage, "--instance", self.instance,
                            "--timeout", "60"], capture_output=True, text=True, timeout=120)
        said = (r.stdout.strip() or r.stderr.strip()).replace("\n", "; ")
        self.note("restart", stage, f"exit {r.returncode}: {said}")


def calibrate(cfg):
    """Passes per second of an undisturbed run on this machine now (a run of a few seconds)."""
    passes = 2000
    out = os.path.join(cfg.workdir, "calibrate")
    instance = f"soak{os.getpid()}-cal"
    began = time.monotonic()
    run = start_run(cfg, instance, out, passes)
    code = finish(run, cfg.timeout_s)
    took = time.monotonic() - began
    shutil.rmtree(out, ignore_errors=True)
    remove_instance_shm(instance)
    assert code == 0, f"the calibration run exits 0 ({code}):\n{run.text()[-2000:]}"
    return passes / took


# ---------------------------------------------------------------------------- ledger


def ledger_of(st):
    by = {s["stage"]: s for s in st["stages"]}
    d = st["drops"]
    return dict(R=by["capture"]["in_total"], P=by["capture"]["out_total"],
                F=sum(s["in_total"] for s in st["stages"] if stage_of(s["stage"]) == "flowd"),
                S=d["sampled_out"], D=d["ring_full"] + d["kernel"])


def check_ledger(samples, shards):
    """The per-sample identities of the module doc; returns (violations, lags): strings.

    A lag is F_k > P_(k+1) by at most one flush (shards x batch_packets): capture publishes a
    flush's frames shard by shard, waiting for room in each ring, and stores the shards'
    sequence counters (its resume point, and P) only once the whole flush is out. Killed
    while it waits (a full ring: downstream is restarting), its successor resumes from the
    stored counters, so P is behind what flowd has by the frames already published, until
    the successor has read up to them again (flowd skips the repeated frames by sequence
    number: nothing is counted twice, and the end balances). Reported, not a violation."""
    bad, lags = [], []
    most = shards * BATCH_PACKETS
    led = [(s.t, s.ledger) for s in samples]
    for k, (t, x) in enumerate(led):
        pending = x["R"] - x["P"] - x["S"] - x["D"]
        if not -(PACKETS_PER_READ + most) <= pending <= most:
            bad.append(f"t {t} s: pending R-P-S-D = {pending} outside "
                       f"[{-(PACKETS_PER_READ + most)}, {most}] ({x})")
        if k + 1 < len(led):
            y = led[k + 1][1]
            if 0 < x["F"] - y["P"] <= most:
                lags.append(f"t {t} s: processed F {x['F']} > published P {y['P']} at the next "
                            f"sample (t {led[k + 1][0]} s), by {x['F'] - y['P']}")
            elif x["F"] > y["P"]:
                bad.append(f"t {t} s: processed F {x['F']} > published P {y['P']} at the "
                           f"next sample (t {led[k + 1][0]} s)")
            for key in ("P", "S", "D"):
                if y[key] < x[key]:
                    bad.append(f"t {led[k + 1][0]} s: {key} went back {x[key]} -> {y[key]}")
    return bad, lags


def max_in_flight(samples):
    return max((s.ledger["P"] - s.ledger["F"] for s in samples), default=0)


SANITIZER = re.compile(r"ERROR: (Address|Leak|Undefined)Sanitizer|runtime error: |"
                       r"SUMMARY: (Address|Undefined)Sanitizer")
SUMMARY = re.compile(r"packets\s+received (\d+)\s+processed (\d+) .*?sampled out (\d+)\s+"
                     r"dropped: ring full (\d+), kernel (\d+)")


def summary_ledger(text):
    """(received, processed, sampled out, ring full, kernel) from a run summary, or None."""
    m = SUMMARY.search(text)
    return tuple(int(g) for g in m.groups()) if m else None


# ---------------------------------------------------------------------------- memory, fds


def series(samples, after_t, process_warmup_s):
    """name -> [(t, pid, proc sample)] of samples past `after_t` and past each process's own
    first `process_warmup_s` (the supervisor's age counts from the soak's start)."""
    out = {}
    for s in samples:
        if s.t < after_t:
            continue
        for pid, p in s.procs.items():
            if p["name"] != "supervisor" and p["age"] < process_warmup_s:
                continue
            out.setdefault(p["name"], []).append((s.t, pid, p))
    return out


def slope(points):
    """Least-squares slope of [(x, y)] (0 with fewer than 3 points)."""
    n = len(points)
    if n < 3:
        return 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0


LONG_S = 600  # a stage process or a stage's run of processes judged over at least this long


def check_memory(samples, after_t, process_warmup_s, bound, shm_size):
    """Memory after warm-up; returns (figures, violations). Growth is per 10 minutes: the
    least-squares slope over the soak's time x 600 s, of PSS and of its parts, per process
    name (a stage's successive processes together) for the figures.

    What is judged is the private part of PSS, Pss_Anon (each process's series through a
    5-sample running median: a fork shares the supervisor's pages with the child for a moment,
    halving its Pss_Anon for one sample). The rest of a process's PSS is its share of pages
    that other processes map too (libraries, the shared memory), which moves whenever another
    process starts, dies or touches a page: the supervisor's PSS swings by 2 MiB as stages are
    killed while its private memory stays the same to the KiB. Like with like:
    - the supervisor, one process for the whole soak: private growth under `bound(span)`;
    - a stage process that lived at least LONG_S judged (past its own warm-up): the same. Stage
      processes mostly live seconds to a few minutes between kills, and their heaps grow in
      steps to a plateau that depends on the work (signerd 1.4 -> 1.9 MiB when the
      disturbances stop and it runs flat out): over such a short life a step reads as many
      MiB per 10 minutes, so shorter lives are reported, not judged;
    - a stage's successive processes, when the soak judged them over at least LONG_S: the
      private peak of the later half of its processes is at most that of the earlier half
      plus 1 MiB per 10 minutes of the span (a process starts from the shared memory; growing
      shared state, or a leak every process repeats, shows here). Shorter: reported only;
    - the shared memory whole: the sum of every process's Pss_Shmem never exceeds the size
      of the instance's shared-memory objects (fixed at start by the plan) by more than 1 MiB
      (Pss_Shmem also counts shmem-backed pages that are not the instance's objects: a 30-
      minute soak saw the sum 0.19 MiB above the objects' size, flat).
    """
    figures, bad = {}, []
    for name, pts in sorted(series(samples, after_t, process_warmup_s).items()):
        if len(pts) < 3:
            continue
        per = {key: slope([(t, p.get(key, 0)) for t, _, p in pts]) * 600
               for key in ("pss", "anon", "shmem")}
        span = pts[-1][0] - pts[0][0]
        pss = [p["pss"] for _, _, p in pts]
        figures[name] = dict(samples=len(pts), span_s=round(span, 1),
                             processes=len({pid for _, pid, _ in pts}),
                             pss_min=min(pss), pss_max=max(pss),
                             pss_growth_per_10min=round(per["pss"]),
                             anon_growth_per_10min=round(per["anon"]),
                             shmem_growth_per_10min=round(per["shmem"]))
        min_span = 0 if name == "supervisor" else LONG_S
        bad += judge_processes(name, pts, bound, min_span, figures[name])
        if name != "supervisor":
            bad += judge_successors(name, pts, span, figures[name])
    shared = max((sum(p.get("shmem", 0) for p in s.procs.values()) for s in samples), default=0)
    figures["shared memory"] = dict(most_pss_shmem=shared, objects=shm_size)
    if shm_size and shared > shm_size + MIB:
        bad.append(f"the processes' Pss_Shmem adds up to {shared} bytes, more than the "
                   f"instance's shared-memory objects ({shm_size} bytes) + 1 MiB")
    return figures, bad


def running_median(values, width=5):
    half = width // 2
    return [sorted(values[max(0, i - half):i + half + 1])[len(values[max(0, i - half):
                                                                     i + half + 1]) // 2]
            for i in range(len(values))]


def judge_processes(name, pts, bound, min_span_s, fig):
    """Private growth of each process of `name` judged over at least `min_span_s` (figures of
    the longest-lived eight, judged or not)."""
    bad, lives = [], []
    for pid in {pid for _, pid, _ in pts}:
        own = [(t, p["anon"]) for t, q, p in pts if q == pid and "anon" in p]
        if len(own) < 3:
            continue
        span = own[-1][0] - own[0][0]
        smooth = list(zip([t for t, _ in own], running_median([v for _, v in own])))
        growth = slope(smooth) * 600
        judged = span >= max(min_span_s, 3)
        lives.append((pid, round(span), round(growth), judged))
        if judged and growth >= bound(span):
            bad.append(f"{name} pid {pid}: private PSS (Pss_Anon) grows {growth / 1024:.0f} KiB "
                       f"per 10 min over {span:.0f} s (bound {bound(span) / 1024:.0f} KiB)")
    fig["lives"] = sorted(lives, key=lambda x: -x[1])[:8]  # (pid, s, growth, judged)
    return bad


def judge_successors(name, pts, span, fig):
    """The private peak of the earlier and the later half of `name`'s processes (in the order
    they were first judged); judged when the soak judged them over at least LONG_S."""
    peak, order = {}, []
    for _, pid, p in pts:
        if pid not in peak:
            order.append(pid)
        peak[pid] = max(peak.get(pid, 0), p.get("anon", 0))
    if len(order) < 2:
        return []
    half = len(order) // 2
    early, late = max(peak[p] for p in order[:half]), max(peak[p] for p in order[half:])
    allowed = MIB * span / 600
    fig["peak_private_early_late"] = (early, late)
    if span >= LONG_S and late > early + allowed:
        return [f"{name}: the later processes' private memory peaks at {late / 1024:.0f} KiB, "
                f"the earlier ones' at {early / 1024:.0f} KiB (allowed growth "
                f"{allowed / 1024:.0f} KiB over {span:.0f} s)"]
    return []


def steady_counts(values, window=5):
    """The minimum of every `window` consecutive values (a count seen for fewer samples in a
    row is a transient, e.g. the supervisor between reaping a child and closing its pidfd)."""
    if len(values) < window:
        return [min(values)] if values else []
    return [min(values[i:i + window]) for i in range(len(values) - window + 1)]


def check_fds(samples, after_t, process_warmup_s):
    """Open fds past warm-up, per process name; returns (figures, violations).

    A stage's fd count is not one number: writerd holds its open segment's fd only while a
    segment is open (5 or 6), capture its input file's between files and passes (5 or 6).
    What must not happen is growth: per name, no steady count (steady_counts: transients of
    fewer than 5 samples in a row aside) in the later half of the judged time above the
    largest in the earlier half, and no process's steady counts rising past that largest
    either (a restarted process is a new PID, compared with the same stage's earlier ones).
    The supervisor holds one pidfd per child (zombies included, until reaped): its count is
    judged as fds - children, from samples where the children did not change while its fds
    were listed."""
    counts = {}
    for name, pts in series(samples, after_t, process_warmup_s).items():
        for t, pid, p in pts:
            if name == "supervisor" and "children" not in p:
                continue
            counts.setdefault(name, {}).setdefault(pid, []).append(
                (t, p["fds"] - p.get("children", 0)))
    bad, figures = [], {}
    for name, per_pid in sorted(counts.items()):
        steady = []  # (t of the window's first sample, steady count), every process
        for pid, seen in per_pid.items():
            values = [c for _, c in seen]
            steady += list(zip([t for t, _ in seen], steady_counts(values)))
        if not steady:
            continue
        steady.sort()
        middle = (steady[0][0] + steady[-1][0]) / 2
        early = [c for t, c in steady if t <= middle] or [c for _, c in steady]
        late = [c for t, c in steady if t > middle]
        figures[name] = dict(processes=len(per_pid), counts=sorted({c for _, c in steady}),
                             early_max=max(early), late_max=max(late, default=None))
        if late and max(late) > max(early):
            bad.append(f"{name}: fd counts grow: up to {max(early)} in the earlier half, "
                       f"{max(late)} in the later half")
    return figures, bad


# ---------------------------------------------------------------------------- flows


def record_lines(cfg, store):
    """The store's records as `cat --events --format tsv` lines (streamed), and the header's
    field names. Verified separately: `cat --no-verify` here."""
    p = subprocess.Popen([cfg.flowseal, "cat", store, "--events", "--format", "tsv",
                          "--no-verify"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, bufsize=1 << 20)
    fields = []
    for line in p.stdout:
        if line.startswith("#fields"):
            fields = line.rstrip("\n").split("\t")[1:]
        elif not line.startswith("#"):
            yield fields, line
    err = p.stderr.read()
    assert p.wait() == 0, f"cat {store} exits 0 ({err.strip()[-500:]})"


def line_hash(line):
    """A 64-bit hash of a record line: Python's own (SipHash), the same for every store
    digested by one process (both stores of a soak are)."""
    return hash(line) & 0xFFFFFFFFFFFFFFFF


def digest(cfg, store):
    """Bucketed multiset hash of every record line, record count, dedup totals (packets,
    IP bytes, payload bytes, flows over end and summary records, each event id once) and
    the number of repeated event ids."""
    sums = [0] * BUCKETS
    counts = [0] * BUCKETS
    totals = [0, 0, 0, 0]
    seen_ids, repeats, n = set(), 0, 0
    ix = None
    for fields, line in record_lines(cfg, store):
        h = line_hash(line)
        b = h % BUCKETS
        sums[b] += h
        counts[b] += 1
        n += 1
        if "\tend\t" not in line and "\tsummary\t" not in line:
            continue
        if ix is None:
            ix = {f: fields.index(f) for f in fields}
        v = line.rstrip("\n").split("\t")
        event = v[ix["event"]]
        eid = (v[ix["uid"]], event, v[ix["event_number"]])
        if eid in seen_ids:
            repeats += 1
            continue
        seen_ids.add(eid)
        num = lambda f: int(v[ix[f]])  # noqa: E731
        totals[0] += num("orig_pkts") + num("resp_pkts")
        totals[1] += num("orig_ip_bytes") + num("resp_ip_bytes")
        totals[2] += num("orig_bytes") + num("resp_bytes")
        totals[3] += max(1, num("flow_count")) if event == "summary" else 1
    return dict(sums=[x & 0xFFFFFFFFFFFFFFFF for x in sums], counts=counts, records=n,
                totals=tuple(totals), repeats=repeats)


def digests(cfg, stores):
    """digest() of each store, their `cat`s running at once (threads: the cat processes
    work in parallel, the hashing takes turns)."""
    out = [None] * len(stores)

    def one(i):
        out[i] = digest(cfg, stores[i])
    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(out), "every store was read"
    return out


def differing_records(cfg, store_a, store_b, a, b, show=10):
    """Lines of the buckets whose hashes differ, as (only in a, only in b), a few each."""
    buckets = {i for i in range(BUCKETS) if (a["sums"][i], a["counts"][i]) !=
               (b["sums"][i], b["counts"][i])}
    buckets = set(sorted(buckets)[:16])

    def lines(store):
        out = {}
        for _, line in record_lines(cfg, store):
            if line_hash(line) % BUCKETS in buckets:
                out[line] = out.get(line, 0) + 1
        return out
    la, lb = lines(store_a), lines(store_b)
    only_a = [l for l in la if la[l] > lb.get(l, 0)][:show]
    only_b = [l for l in lb if lb[l] > la.get(l, 0)][:show]
    return only_a, only_b


def verify(cfg, store):
    v = subprocess.run([cfg.flowseal, "verify", store], capture_output=True, text=True,
                       timeout=cfg.timeout_s)
    return v.returncode == 0, (v.stdout + v.stderr).strip()


# ---------------------------------------------------------------------------- the soak


@dataclass
class SoakResult:
    seed: int
    loop: int
    disturbed_s: float
    run_s: float
    exit_code: int
    events: list
    samples: list
    ledger_violations: list
    ledger_lags: list
    summary: tuple
    baseline_summary: tuple
    verify_ok: bool
    verify_text: str
    flows: dict
    memory: dict
    memory_violations: list
    fds: dict
    fd_violations: list
    memory_bound: float
    log_tail: str
    sanitizer_reports: list = field(default_factory=list)  # lines of the run's log

    def kills(self):
        return sum(1 for e in self.events if e[1] == "kill" and "SIGKILLed" in e[3])

    def restarts(self):
        return sum(1 for e in self.events if e[1] == "restart" and "restarted: pid" in e[3])


def memory_bound(window_s):
    """Private memory growth allowed per 10 minutes for a window of `window_s` seconds judged.

    1 MiB per 10 minutes (issue 13) plus a noise term that shrinks with the window. A short
    window cannot resolve a slope that small: one page (4 KiB) of one sample's noise moves a
    least-squares slope over n samples spaced 1 s apart by about 4 KiB x sqrt(12 / n^3) per
    second. The term is four times that noise floor in the same unit (x 600 s) for 16 pages
    of noise, i.e. what a 64 KiB step anywhere in the window could fake: 1.2 MiB over 55 s,
    37 KiB at 10 minutes, 7 KiB at 30.
    """
    n = max(window_s, 3.0)
    noise = 16 * 4096 * (12 / n ** 3) ** 0.5 * 600
    return MIB + 4 * noise


def soak(cfg):
    """Runs the soak of `cfg` (its workdir must exist); returns a SoakResult."""
    rng = random.Random(cfg.seed)
    loop = cfg.loop
    if not loop:
        rate = calibrate(cfg)
        loop = max(200, int(rate * cfg.duration_s * cfg.work_factor))
        cfg.say(f"calibration: {rate:.0f} passes/s undisturbed; loop {loop}")
    tag = f"soak{os.getpid()}"
    store, calm_store = os.path.join(cfg.workdir, "store"), os.path.join(cfg.workdir, "calm")
    cfg.say(f"seed {cfg.seed} (replay: --seed {cfg.seed}), loop {loop}, spared "
            f"{list(cfg.spare) or 'none'}, dedup "
            f"{'on' if cfg.dedup else 'off'}, {cfg.shards} flowd shards, disturbing for "
            f"{cfg.duration_s:.0f} s; the undisturbed run of the same input runs alongside")
    calm = start_run(cfg, tag + "-calm", calm_store, loop)
    t0 = time.monotonic()
    run = start_run(cfg, tag, store, loop)
    sampler = Sampler(cfg, tag, run, t0)
    try:
        sampler.start()
        disturber = Disturber(cfg, tag, run, t0, rng)
        disturber.go()
        disturbed_s = time.monotonic() - t0
        code = finish(run, cfg.timeout_s)
        run_s = time.monotonic() - t0
        sampler.stop_event.set()
        sampler.join(120)
        calm_code = finish(calm, cfg.timeout_s)
    finally:
        for r in (run, calm):
            if r.p.poll() is None:
                r.p.kill()
                r.p.wait()
        remove_instance_shm(tag)
        remove_instance_shm(tag + "-calm")
    for r, name in ((run, "run.log"), (calm, "calm.log")):
        with open(os.path.join(cfg.workdir, name), "w") as f:
            f.write(r.text())
    assert calm_code == 0, f"the undisturbed run exits 0 ({calm_code}):\n{calm.text()[-2000:]}"
    return judge(cfg, loop, disturber.events, sampler.samples, sampler.shm_size, code, run, calm,
                 store, calm_store, disturbed_s, run_s)


def judge(cfg, loop, events, samples, shm_size, code, run, calm, store, calm_store, disturbed_s,
          run_s):
    first = next((e[0] for e in events), 0.0)
    after = first + cfg.warmup_s
    window = max(0.0, (samples[-1].t if samples else 0) - after)
    bound = memory_bound(window)  # reported; each judged span gets its own
    mem, mem_bad = check_memory(samples, after, cfg.process_warmup_s, memory_bound,
                                shm_size)
    fds, fd_bad = check_fds(samples, after, cfg.process_warmup_s)
    ok, vtext = verify(cfg, store) if code == 0 else (False, "the run failed")
    flows = {}
    if code == 0:
        a, b = digests(cfg, [store, calm_store])
        flows = dict(records=a["records"], calm_records=b["records"], totals=a["totals"],
                     calm_totals=b["totals"], repeats=a["repeats"],
                     same_records=(a["sums"], a["counts"]) == (b["sums"], b["counts"]))
        if not flows["same_records"]:
            flows["only_soak"], flows["only_calm"] = differing_records(cfg, store, calm_store,
                                                                        a, b)
    res = SoakResult(cfg.seed, loop, round(disturbed_s, 1), round(run_s, 1), code, events,
                     samples, *check_ledger(samples, cfg.shards), summary_ledger(run.text()),
                     summary_ledger(calm.text()), ok, vtext[-1500:], flows, mem, mem_bad,
                     fds, fd_bad, bound, run.text()[-3000:])
    # A stage that a sanitizer stops is restarted like any crash, and the run still ends 0:
    # its report is only in the log.
    res.sanitizer_reports = [line for line in run.text().splitlines()
                             if SANITIZER.search(line)][:20]
    return res


def problems(res, dedup):
    """Everything the soak requires, as a list of what failed (empty: passed)."""
    out = []
    if res.exit_code != 0:
        out.append(f"the run exits {res.exit_code}:\n{res.log_tail}")
        return out
    out += [f"sanitizer: {line}" for line in res.sanitizer_reports]
    out += [f"ledger: {v}" for v in res.ledger_violations[:20]]
    s, c = res.summary, res.baseline_summary
    if s is None or s[0] != s[1] + s[2] + s[3] + s[4]:
        out.append(f"the run summary's ledger balances (received, processed, sampled out, "
                   f"ring full, kernel = {s})")
    if s is None or c is None or s[0] != c[0] or s[1] != c[1]:
        out.append(f"received and processed equal the undisturbed run's ({s} vs {c})")
    if not res.verify_ok:
        out.append(f"verify: {res.verify_text}")
    f = res.flows
    if f and not dedup and not f["same_records"]:
        out.append(f"the stored records equal the undisturbed run's ({f['records']} vs "
                   f"{f['calm_records']}); only after the soak: {f['only_soak']}; only "
                   f"undisturbed: {f['only_calm']}")
    if f and f["totals"] != f["calm_totals"]:
        out.append(f"flows, packets and bytes over ends + summaries equal the undisturbed "
                   f"run's ({f['totals']} vs {f['calm_totals']})")
    if f and not dedup and f["repeats"]:
        out.append(f"{f['repeats']} event ids stored twice (dedup off)")
    out += [f"memory: {v}" for v in res.memory_violations]
    out += [f"fds: {v}" for v in res.fd_violations]
    return out


def report(res, say):
    say(f"soak: seed {res.seed}, loop {res.loop}, disturbed {res.disturbed_s} s, run "
        f"{res.run_s} s, exit {res.exit_code}; {res.kills()} kills and {res.restarts()} "
        f"operator restarts done ({len(res.events)} disturbances tried), "
        f"{len(res.samples)} samples")
    say(f"  ledger: summary {res.summary} (received, processed, sampled out, ring full, "
        f"kernel); undisturbed {res.baseline_summary}; per-sample violations "
        f"{len(res.ledger_violations)}; most packets in flight (P - F) "
        f"{max_in_flight(res.samples)}; samples where P lagged what flowd had by at most "
        f"one flush (check_ledger): {len(res.ledger_lags)}")
    for line in res.ledger_lags[:10]:
        say(f"    lag: {line}")
    say(f"  sanitizer reports in the run's log: {len(res.sanitizer_reports)}")
    say(f"  verify: {'OK' if res.verify_ok else 'FAILED'}; flows: "
        f"{ {k: v for k, v in res.flows.items() if not k.startswith('only')} }")
    say(f"  memory (bound {res.memory_bound / 1024:.0f} KiB per 10 min):")
    for name, fig in res.memory.items():
        if name == "shared memory":
            say(f"    shared memory: the processes' Pss_Shmem adds up to at most "
                f"{fig['most_pss_shmem'] / MIB:.2f} MiB of {fig['objects'] / MIB:.2f} MiB")
            continue
        say(f"    {name:9s} {fig['processes']:3d} process(es), {fig['samples']:5d} samples over "
            f"{fig['span_s']:7.1f} s: PSS {fig['pss_min'] / MIB:6.2f}..{fig['pss_max'] / MIB:6.2f} "
            f"MiB, growth per 10 min: PSS {fig['pss_growth_per_10min'] / 1024:8.1f} KiB, anon "
            f"{fig['anon_growth_per_10min'] / 1024:8.1f} KiB, shmem "
            f"{fig['shmem_growth_per_10min'] / 1024:8.1f} KiB")
        if fig.get("lives"):
            say(f"      longest lives (pid, s, private growth per 10 min in bytes, judged): "
                f"{fig['lives'][:4]}")
        if fig.get("peak_private_early_late"):
            early, late = fig["peak_private_early_late"]
            say(f"      private peak of the earlier / later half of its processes: "
                f"{early / 1024:.0f} / {late / 1024:.0f} KiB")
    for name, fig in sorted(res.fds.items()):
        what = "fds - children" if name == "supervisor" else "fds"
        say(f"    {what} {name:9s} {fig['processes']:3d} process(es): steady counts "
            f"{fig['counts']}, largest in the earlier / later half {fig['early_max']} / "
            f"{fig['late_max']}")


def rejudge(workdir, warmup_s, shards, say):
    """The ledger, memory and fd checks again, from a soak's samples.jsonl and events.jsonl
    (a soak's workdir); returns the violations."""
    samples, shm = [], 0
    with open(os.path.join(workdir, "samples.jsonl")) as f:
        for line in f:
            j = json.loads(line)
            samples.append(Sample(j["t"], j["ledger"], {int(k): v for k, v in j["procs"].items()}))
            shm = max(shm, j.get("shm", 0))
    with open(os.path.join(workdir, "events.jsonl")) as f:
        events = [tuple(json.loads(line)) for line in f]
    after = (events[0][0] if events else 0) + warmup_s
    bad, lags = check_ledger(samples, shards)
    mem, mem_bad = check_memory(samples, after, 5.0, memory_bound, shm)
    fds, fd_bad = check_fds(samples, after, 5.0)
    say(f"rejudged {workdir}: {len(samples)} samples, {len(events)} disturbances, judged from "
        f"{after:.0f} s; ledger violations {len(bad)}, lags {len(lags)}")
    res = SoakResult(0, 0, 0, 0, 0, events, samples, bad, lags, None, None, True, "", {}, mem,
                     mem_bad, fds, fd_bad, memory_bound(samples[-1].t - after), "")
    report(res, say)
    return bad + mem_bad + fd_bad, res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--flowseal", default="build/supervisor/flowseal")
    ap.add_argument("--capture", default=os.path.join(os.path.dirname(__file__), "..", "data",
                                                      "KakaoTalk_talk.pcap"))
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--loop", type=int, default=0, help="passes (0: calibrated)")
    ap.add_argument("--work-factor", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--dedup", action="store_true")
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--spare", action="append", default=[], choices=STAGES,
                    help="a stage never disturbed (repeatable)")
    ap.add_argument("--workdir", default=None, help="kept (default: a temp dir, removed)")
    ap.add_argument("--plot", default=None, help="write an SVG plot here")
    ap.add_argument("--report-json", default=None)
    ap.add_argument("--rejudge", default=None, metavar="WORKDIR",
                    help="judge a kept workdir's samples again (and --plot them); no run")
    ap.add_argument("--warmup", type=float, default=None, help="s after the first disturbance")
    a = ap.parse_args()
    warmup = a.warmup if a.warmup is not None else max(20.0, a.minutes * 60 * 0.1)
    if a.rejudge:
        bad, res = rejudge(a.rejudge, warmup, a.shards, print)
        if a.plot:
            import soak_plot
            soak_plot.write_svg(res.samples, res.events, a.plot, f"soak {a.rejudge}")
        for p in bad:
            print(f"FAILED: {p}")
        return 1 if bad else 0
    seed = a.seed if a.seed is not None else int(time.time()) % 100000
    workdir = a.workdir or tempfile.mkdtemp(prefix="flowseal-soak-")
    os.makedirs(workdir, exist_ok=True)
    cfg = SoakConfig(flowseal=os.path.abspath(a.flowseal), capture=os.path.abspath(a.capture),
                     workdir=workdir, seed=seed, duration_s=a.minutes * 60, loop=a.loop,
                     work_factor=a.work_factor, dedup=a.dedup, shards=a.shards,
                     spare=tuple(a.spare),
                     say=lambda line: print(line, flush=True),
                     warmup_s=warmup)
    res = soak(cfg)
    report(res, cfg.say)
    if a.plot:
        import soak_plot
        soak_plot.write_svg(res.samples, res.events, a.plot,
                            f"soak: seed {seed}, {res.disturbed_s / 60:.1f} min disturbed, "
                            f"{res.kills()} kills, {res.restarts()} restarts")
    if a.report_json:
        with open(a.report_json, "w") as f:
            json.dump({k: v for k, v in res.__dict__.items() if k not in ("samples",)}, f,
                      indent=1, default=str)
    failed = problems(res, a.dedup)
    for p in failed:
        print(f"FAILED: {p}", flush=True)
    if not a.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
