"""One flowseal run: the control block sampled while it runs, the run summary parsed,
the figures derived from them.

The sampler reads the control block itself (a read-only mmap) rather than `flowseal status
--json`: it samples every 5 ms until the run is ready and at 10 Hz after, and one `status
--json` takes half a second (it samples twice for its rates) plus a process start, which
would also cost the run under measurement CPU. So that a layout change cannot go unnoticed,
check_layout() compares what this reader sees with `flowseal status --json` of a run once
per harness invocation and stops the harness if they disagree."""
import json
import mmap
import os
import re
import shutil
import signal
import struct
import subprocess
import tempfile
import threading
import time

from .common import CLK_TCK, UNITS, dir_bytes, log, sh


class ControlBlock:
    """Read-only view of common/control_block.h's ControlBlock (layout version 7):
    header 128 bytes, then 64-byte-aligned StageSlots of 256 bytes (pid, state, kind, shard,
    heartbeat_ns, started_ns, restarts, exit_status, 24 counters, ready_ns, memory_restarts).
    check_layout() holds these offsets against `flowseal status --json`."""
    MAGIC = 0x314C544353574C46
    # common/control_block.h: layout 3 put the pressure figures before the slots (at 128);
    # 5 added counters and slot fields after the ones read here; 6 a shipd slot after
    # writerd's when the run ships (ship_slot at 96; the five core stages' slots are as before);
    # 7 the reload counters in the padding before the slots (nothing read here moved).
    VERSION = 7
    SLOT0, SLOT_BYTES = 128, 256
    KINDS = ["capture", "flowd", "dedupd", "signerd", "writerd", "shipd"]
    STATES = ["not-started", "running", "draining", "done", "failed"]  # StageState

    def __init__(self, instance):
        self.path = f"/dev/shm/flowseal.{instance}.control"
        self.map = None

    def open(self):
        if self.map is not None:
            return True
        try:
            with open(self.path, "rb") as f:
                m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
        except (FileNotFoundError, ValueError, PermissionError):
            return False
        magic, version = struct.unpack_from("<QI", m, 0)
        if magic == 0 and version == 0:
            m.close()  # created, not yet written by the supervisor (seen under ASan): later
            return False
        if magic != self.MAGIC or version != self.VERSION:
            m.close()
            raise SystemExit(f"run-pipeline: {self.path}: control block magic/version "
                             f"{magic:#x}/{version} is not the layout this harness reads")
        self.map = m
        return True

    def ready(self):
        return struct.unpack_from("<I", self.map, 28)[0] != 0

    def slots(self):
        shards = struct.unpack_from("<I", self.map, 12)[0]
        out = []
        for i in range(4 + shards):
            base = self.SLOT0 + i * self.SLOT_BYTES
            pid, state, kind, shard = struct.unpack_from("<iIII", self.map, base)
            heartbeat, = struct.unpack_from("<q", self.map, base + 16)
            counters = struct.unpack_from("<24Q", self.map, base + 40)
            name = self.KINDS[kind] if kind < len(self.KINDS) else f"kind{kind}"
            if name == "flowd":
                name = f"flowd[{shard}]"
            out.append({"name": name, "pid": pid, "state": state, "heartbeat": heartbeat,
                        "counters": counters})
        return out

    def close(self):
        if self.map is not None:
            self.map.close()
            self.map = None


def status_in_out(slot):
    """A slot's (in, out) as `flowseal status` computes them from the counters
    (supervisor/control_commands.cpp: capture received/published; flowd packets + not IP +
    malformed / events out; the record stages records in / out)."""
    c = slot["counters"]
    if slot["name"] == "capture":
        return c[0], c[5]
    if slot["name"].startswith("flowd["):
        return c[0] + c[1] + c[2], c[7]
    return c[0], c[1]


def layout_disagreements(before, status, after):
    """What the control block read at this module's offsets (`before` and `after` a `flowseal
    status --json`) says that status does not: the same stages by name, pid and state, and
    each stage's in/out totals between the two reads (counters only grow)."""
    stages = {s["stage"]: s for s in status["stages"] if s["stage"] != "shipd"}
    names = [s["name"] for s in before]
    if names != [s["name"] for s in after] or sorted(names) != sorted(stages):
        return [f"stages {names} here, {sorted(stages)} in status --json"]
    wrong = []
    for b, a in zip(before, after):
        st = stages[b["name"]]
        state = ControlBlock.STATES[b["state"]] if b["state"] < len(ControlBlock.STATES) else b["state"]
        if not (b["pid"] == a["pid"] == st["pid"]):
            wrong.append(f"{b['name']}: pid {b['pid']}/{a['pid']} here, {st['pid']} in status")
        if not (b["state"] == a["state"] and state == st["state"]):
            wrong.append(f"{b['name']}: state {state} here, {st['state']} in status")
        (in_b, out_b), (in_a, out_a) = status_in_out(b), status_in_out(a)
        if not (in_b <= st["in_total"] <= in_a and out_b <= st["out_total"] <= out_a):
            wrong.append(f"{b['name']}: in/out {in_b}..{in_a} / {out_b}..{out_a} here, "
                         f"{st['in_total']} / {st['out_total']} in status")
    return wrong


def check_layout(flowseal, pcap, timeout=60):
    """Runs `flowseal run` over `pcap` in loop mode (longer than the check), waits until it is
    ready, and reads the control block at this module's offsets before and after a `flowseal
    status --json` of the run that shows capture's packets: names, pids, states and counters
    must agree (up to three tries: a stage may restart in between). Exits the
    harness saying what differs if they do not: common/control_block.h changed and
    ControlBlock above must follow. Returns a line saying what was compared."""
    out = tempfile.mkdtemp(prefix="flowseal-bench-layout-")
    instance = f"benchlayout{os.getpid()}"
    cmd = [flowseal, "run", "-r", pcap, "-o", out, "--instance", instance,
           "--set", "capture.loop=100000", "--set", "supervisor.stats_interval_s=0"]
    errlog = tempfile.TemporaryFile("w+")  # a file: a pipe nobody reads could block the run
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=errlog, text=True)
    control = ControlBlock(instance)
    problems = ["the run never became ready"]
    try:
        deadline = time.monotonic() + timeout
        tries = 0
        while time.monotonic() < deadline and p.poll() is None and tries < 3:
            try:
                ready = control.open() and control.ready()
                slots = control.slots() if ready else []
            except (ValueError, struct.error):
                ready, slots = False, []
            if not (slots and all(s["state"] == 1 and s["pid"] > 0 for s in slots)):
                time.sleep(0.02)
                continue
            st = sh([flowseal, "status", "--instance", instance, "--json"], timeout=60)
            after = control.slots()
            if st.returncode != 0:
                tries += 1
                problems = [f"flowseal status --json exited {st.returncode}: {st.stderr.strip()}"]
                continue
            status = json.loads(st.stdout)
            if not any(x["stage"] == "capture" and x["in_total"] > 0 for x in status["stages"]):
                continue  # nothing counted yet: a comparison of zeros would prove nothing
            tries += 1
            problems = layout_disagreements(slots, status, after)
            if not problems:
                return (f"control block layout {ControlBlock.VERSION}: {len(slots)} stage slots "
                        f"agree with `flowseal status --json`")
    finally:
        control.close()
        if p.poll() is None:
            p.send_signal(signal.SIGINT)  # a drain; then kill: never leave a run behind
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        errlog.seek(0)
        err = errlog.read()
        errlog.close()
        shutil.rmtree(out, ignore_errors=True)
    raise SystemExit("run-pipeline: the control block as benchmarks/flowbench/probe.py reads it "
                     "disagrees with `flowseal status --json` (common/control_block.h changed?):\n  "
                     + "\n  ".join(problems) + f"\n{err[-1500:]}")


def proc_cpu_s(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError):
        return None


def proc_pss_bytes(pid, file_backed=True):
    """PSS of a process; with file_backed=False only anonymous + shared-memory pages (what
    the process set costs beyond the page cache of the files it maps, e.g. the capture)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            text = f.read()
        if file_backed:
            m = re.search(r"^Pss:\s+(\d+) kB", text, re.M)
            return int(m.group(1)) * 1024 if m else None
        parts = re.findall(r"^Pss_(?:Anon|Shmem):\s+(\d+) kB", text, re.M)
        return sum(int(x) for x in parts) * 1024 if parts else None
    except OSError:
        return None


class Sampler(threading.Thread):
    """Samples the control block and each stage's /proc every `period` s while a run goes on:
    per stage its main counter (capture: packets received; flowd: packets applied; the rest:
    records in), CPU seconds and PSS. Also notes when every stage is running with a
    heartbeat (the ready time) and the supervisor's own CPU."""

    def __init__(self, instance, supervisor_pid, period=0.1):
        super().__init__(daemon=True)
        self.control = ControlBlock(instance)
        self.supervisor_pid = supervisor_pid
        self.period = period
        self.t0 = time.monotonic()
        self.samples = []       # (t, {stage: (counter, cpu_s, pss_bytes)})
        self.ready_s = None
        self.peak_nonfile_pss = 0  # stages' anonymous + shared-memory PSS, summed per sample
        self.stop_flag = threading.Event()

    def run(self):
        while not self.stop_flag.is_set():
            t = time.monotonic() - self.t0
            try:
                if self.control.open():
                    slots = self.control.slots()
                    if self.ready_s is None and self.control.ready() and slots and all(
                            s["state"] == 1 and s["heartbeat"] != 0 and s["pid"] > 0 for s in slots):
                        self.ready_s = t
                    row = {}
                    nonfile = 0
                    for s in slots:
                        if s["pid"] > 0:
                            row[s["name"]] = (s["counters"][0], proc_cpu_s(s["pid"]),
                                              proc_pss_bytes(s["pid"]))
                            nonfile += proc_pss_bytes(s["pid"], file_backed=False) or 0
                    self.peak_nonfile_pss = max(self.peak_nonfile_pss, nonfile)
                    row["supervisor"] = (0, proc_cpu_s(self.supervisor_pid),
                                         proc_pss_bytes(self.supervisor_pid))
                    self.samples.append((t, row))
            except (ValueError, struct.error):
                pass
            self.stop_flag.wait(self.period if self.ready_s is not None else 0.005)
        self.control.close()

    def stop(self):
        self.stop_flag.set()
        self.join()


# ------------------------------------------------------------------ one flowseal run

def parse_summary(text):
    fig = {}
    m = re.search(r"packets\s+received (\d+)\s+processed (\d+) \((\d+) in flows, (\d+) not IP, "
                  r"(\d+) malformed\)\s+sampled out (\d+)\s+dropped: ring full (\d+), kernel (\d+)", text)
    if not m:
        raise SystemExit(f"run-pipeline: no packet line in the run summary:\n{text[-2000:]}")
    (fig["packets"], fig["processed"], fig["flow_packets"], fig["not_ip"], fig["malformed"],
     fig["drops.sampled_out"], fig["drops.ring_full"], fig["drops.kernel"]) = map(int, m.groups())
    m = re.search(r"records\s+from flowd (\d+)\s+after dedup (\d+)\s+sealed (\d+) in (\d+) batches", text)
    fig["records_flowd"], fig["records_dedup"], fig["records"], fig["batches"] = map(int, m.groups())
    m = re.search(r"flows\s+started (\d+)\s+ended (\d+)\s+evicted (\d+)", text)
    fig["flows_started"], fig["flows"], fig["flows_evicted"] = map(int, m.groups())
    m = re.search(r"stages\s+(.*)", text)
    for name, cpu, pss, unit in re.findall(r"(?:^|\s)(\S+) cpu ([\d.]+) s pss ([\d.]+) (\w+)", m.group(1)):
        fig[f"cpu_s.{name}"] = float(cpu)
        fig[f"pss_mib.{name}"] = float(pss) * UNITS[unit] / (1 << 20)
    m = re.search(r"peak total PSS ([\d.]+) (\w+)", text)
    if m:
        fig["pss_mib.total"] = float(m.group(1)) * UNITS[m.group(2)] / (1 << 20)
    fig["accounted"] = 1 if "dropped: yes" in text else 0
    return fig


def run_flowseal(flowseal, inputs, extra, keep_output=False, sample=False, wrapper=None):
    out = tempfile.mkdtemp(prefix="flowseal-bench-")
    instance = f"bench{os.getpid()}x{int(time.monotonic() * 1000) % 100000}"
    cmd = (wrapper or []) + [flowseal, "run", *inputs, "-o", out, "--instance", instance,
                             "--set", "supervisor.stats_interval_s=0"] + extra
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = Sampler(instance, p.pid) if sample else None
    if sampler:
        sampler.start()
    # stderr is read by a thread so that a full pipe never blocks the supervisor.
    err_chunks = []
    reader = threading.Thread(target=lambda: err_chunks.append(p.stderr.read()), daemon=True)
    reader.start()
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.monotonic() - t0
    reader.join()
    p.returncode = os.waitstatus_to_exitcode(status)
    if sampler:
        sampler.stop()
    text = "".join(err_chunks)
    if p.returncode != 0:
        shutil.rmtree(out, ignore_errors=True)
        raise SystemExit(f"run-pipeline: flowseal exited {p.returncode}:\n{text[-3000:]}")
    fig = parse_summary(text)
    fig["wall_s"] = wall
    stage_cpu = sum(v for k, v in fig.items() if k.startswith("cpu_s."))
    fig["cpu_s.supervisor"] = max(0.0, usage.ru_utime + usage.ru_stime - stage_cpu)
    fig["stored_bytes"] = dir_bytes(out)
    if sampler:
        fig["_timeline"] = sampler.samples
        fig["ready_s"] = sampler.ready_s
        fig["pss_mib.total_without_file_pages"] = sampler.peak_nonfile_pss / (1 << 20)
    if wrapper is None:
        v = sh([flowseal, "verify", out], timeout=3600)
        if v.returncode != 0:
            raise SystemExit(f"run-pipeline: verify failed on the benchmark output:\n{v.stderr[-2000:]}")
    if keep_output:
        fig["_output"] = out
    else:
        shutil.rmtree(out, ignore_errors=True)
    return fig


def derive(fig, packets, data_bytes):
    w = fig["wall_s"]
    fig["packets_per_s"] = fig["packets"] / w
    fig["gbit_per_s"] = data_bytes * 8 / w / 1e9
    fig["records_per_s"] = fig["records"] / w
    fig["signatures_per_s"] = fig["batches"] / w
    fig["stored_bytes_per_flow"] = fig["stored_bytes"] / max(1, fig["flows"])
    fig["stored_bytes_per_record"] = fig["stored_bytes"] / max(1, fig["records"])
    stages = [k for k in fig if k.startswith("cpu_s.") and k not in ("cpu_s.total", "cpu_s.supervisor")]
    fig["cpu_s.total"] = sum(fig[k] for k in stages)
    fig["cpu_s_per_mpkt"] = fig["cpu_s.total"] / max(1, fig["packets"]) * 1e6
    fig["cpu_s_per_mpkt_with_supervisor"] = (fig["cpu_s.total"] + fig["cpu_s.supervisor"]) / max(1, fig["packets"]) * 1e6
    fig["drops.total"] = fig["drops.ring_full"] + fig["drops.kernel"]
    if fig["packets"] != packets:
        log(f"warning: flowseal received {fig['packets']} packets, the capture holds {packets}")


def gzip_json_bytes(flowseal, out):
    """Bytes of `flowseal cat --events | gzip -6` (the same records as Zeek-style JSON)."""
    cat = subprocess.Popen([flowseal, "cat", out, "--events"], stdout=subprocess.PIPE)
    gz = subprocess.Popen(["gzip", "-6"], stdin=cat.stdout, stdout=subprocess.PIPE)
    cat.stdout.close()
    total = 0
    while chunk := gz.stdout.read(1 << 20):
        total += len(chunk)
    gz.wait()
    cat.wait()
    return total
