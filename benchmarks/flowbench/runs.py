"""Runs other than the plain offline one: microbenchmarks, callgrind, the idle process set,
a live replay."""
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

from .common import log, sh
from .probe import Sampler, run_flowseal


MICRO = [  # program, filter, the figure it gives
    ("ring_bench", "bytes:64/", "ring 64 B frames"),
    ("packet_bench", ".", None),
    ("flow_bench", ".", None),
    ("dedup_bench", ".", None),
    ("seal_bench", ".", None),
    ("store_bench", ".", None),
]


def run_micro(build):
    rows = []
    for prog, flt, _ in MICRO:
        exe = os.path.join(build, "benchmarks", prog)
        if not os.access(exe, os.X_OK):
            rows.append((prog, "not built", None, {}))
            continue
        r = sh([exe, f"--benchmark_filter={flt}", "--benchmark_repetitions=3",
                "--benchmark_report_aggregates_only=true", "--benchmark_format=json"], timeout=1800)
        try:
            data = json.loads(r.stdout)
        except json.JSONDecodeError:
            rows.append((prog, f"failed: {r.stderr[-200:]}", None, {}))
            continue
        for b in data.get("benchmarks", []):
            if b.get("aggregate_name") != "median":
                continue
            rate = b.get("items_per_second") or b.get("frames/s") or b.get("records/s")
            extra = {k: v for k, v in b.items() if k in ("bytes_per_flow", "bytes_per_record",
                                                         "bytes_per_event", "records_out_share",
                                                         "uncompressed_bytes_per_record")}
            rows.append((prog, b["run_name"], rate, extra))
    return rows


# ------------------------------------------------------------------ callgrind

def callgrind_capture(pcap, packets):
    """The first 100 k packets of the capture (editcap), or the file itself if smaller."""
    if packets <= 100_000:
        return pcap
    small = "/tmp/flowseal-bench-100k.pcap"
    if not os.path.exists(small) or os.path.getmtime(small) < os.path.getmtime(pcap):
        subprocess.run(["editcap", "-r", pcap, small + ".tmp", "1-100000"], check=True,
                       stdout=subprocess.DEVNULL)
        os.replace(small + ".tmp", small)
    return small


def run_callgrind(flowseal, pcap):
    if not shutil.which("valgrind"):
        return None, "valgrind is not installed (apt-get install valgrind)"
    work = tempfile.mkdtemp(prefix="flowseal-cg-")
    wrapper = ["valgrind", "--tool=callgrind", "--trace-children=yes",
               f"--callgrind-out-file={work}/cg.%p"]
    fig = run_flowseal(flowseal, ["-r", pcap], ["--set", "supervisor.heartbeat_timeout_ms=600000"],
                       wrapper=wrapper)
    stages = {}
    for path in glob.glob(f"{work}/cg.*"):
        with open(path, errors="replace") as f:
            head = f.read(4096)
        cmd = re.search(r"^cmd:\s*(.*)$", head, re.M).group(1)
        exe = os.path.basename(cmd.split()[0])
        name = exe.replace("flowseal-", "") if exe != "flowseal" else "supervisor"
        m = re.search(r"--shard (\d+)", cmd)
        if m:
            name += f"[{m.group(1)}]"
        ann = sh(["callgrind_annotate", "--threshold=100", path]).stdout
        total = re.search(r"^\s*([\d,]+)\s+\(100.0%\)\s+PROGRAM TOTALS", ann, re.M) or \
            re.search(r"^\s*([\d,]+)\s+PROGRAM TOTALS", ann, re.M)
        ir = int(total.group(1).replace(",", "")) if total else 0
        top = []
        for line in ann.splitlines():
            m = re.match(r"^\s*([\d,]+)\s+\(\s*([\d.]+)%\)\s+(\S.*?)\s*$", line)
            if m and "PROGRAM TOTALS" not in line and len(top) < 6:
                fn = m.group(3)
                obj = re.search(r"\[([^\]]*)\]\s*$", fn)
                fn = re.sub(r"\s*\[[^\]]*\]\s*$", "", fn)
                fn = re.sub(r"^[^:]*:", "", fn, count=1) if ":" in fn.split("(")[0] else fn
                if fn.startswith("0x") and obj:  # a stripped library: name the library
                    fn = f"{fn} in {os.path.basename(obj.group(1))}"
                top.append((float(m.group(2)), fn[:110]))
        stages[name] = {"ir": ir, "top": top}
    shutil.rmtree(work, ignore_errors=True)
    return {"packets": fig["packets"], "records": fig["records"], "stages": stages}, None


# ------------------------------------------------------------------ idle process set

def run_idle(flowseal, seconds=20):
    """Live run without traffic: veth pair in a netns of our own (root), else lo + a filter
    that matches nothing. Returns ready time, PSS at start, CPU share over `seconds`."""
    ns = f"fsbench{os.getpid()}"
    use_ns = os.geteuid() == 0 and shutil.which("ip") and \
        sh(["ip", "netns", "add", ns]).returncode == 0
    out = tempfile.mkdtemp(prefix="flowseal-idle-")
    instance = f"idle{os.getpid()}"
    try:
        if use_ns:
            sh(["ip", "-n", ns, "link", "add", "fsb0", "type", "veth", "peer", "name", "fsb1"])
            sh(["ip", "-n", ns, "link", "set", "fsb0", "up"])
            sh(["ip", "-n", ns, "link", "set", "fsb1", "up"])
            prefix, iface, how = ["ip", "netns", "exec", ns], "fsb0", f"veth fsb0 in netns {ns}, no traffic"
            extra = []
        else:
            prefix, iface, how = [], "lo", "lo with BPF filter 'ip proto 253' (matches nothing)"
            extra = ["--set", "capture.filter=ip proto 253"]
        cmd = prefix + [flowseal, "run", "-i", iface, "-o", out, "--instance", instance,
                        "--set", "supervisor.stats_interval_s=0"] + extra
        errlog = open(os.path.join(out, "run.log"), "w+")
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=errlog, text=True)
        sampler = Sampler(instance, p.pid, period=0.5)
        sampler.start()
        deadline = time.monotonic() + 10
        while sampler.ready_s is None and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.01)
        if sampler.ready_s is None:
            p.terminate()  # a drain; then kill: never leave a run (and its stages) behind
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            sampler.stop()
            errlog.seek(0)
            return None, f"the live run did not become ready: {errlog.read()[-500:]}"
        time.sleep(1.0)  # let start-up finish before the quiet window
        first = len(sampler.samples)
        time.sleep(seconds)
        window = sampler.samples[first:]
        stop = sh(prefix + [flowseal, "stop", "--instance", instance, "--timeout", "30"], timeout=60)
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
        sampler.stop()
        if p.returncode != 0:
            errlog.seek(0)
            log(f"idle run: flowseal exited {p.returncode} ({stop.stderr.strip()}): {errlog.read()[-800:]}")
        (t_a, a), (t_b, b) = window[0], window[-1]
        cpu = sum((b[k][1] or 0) - (a[k][1] or 0) for k in b if k in a and k != "supervisor")
        cpu_sup = (b["supervisor"][1] or 0) - (a["supervisor"][1] or 0)
        # PSS at start: at the first sample after ready, and 1 s later (the live capture maps
        # its kernel packet ring once the interface is open), the larger being the figure.
        at_ready = next(row for t, row in sampler.samples if t >= sampler.ready_s)
        stage_pss = lambda row: sum((v[2] or 0) for k, v in row.items() if k != "supervisor")
        pss_ready, pss_settled = stage_pss(at_ready), stage_pss(a)
        return {"how": how, "ready_ms": sampler.ready_s * 1000, "window_s": t_b - t_a,
                "cpu_share_stages": cpu / (t_b - t_a), "cpu_share_supervisor": cpu_sup / (t_b - t_a),
                "pss_mib_at_ready": pss_ready / (1 << 20),
                "pss_mib_start": max(pss_ready, pss_settled) / (1 << 20),
                "pss_mib_start_with_supervisor": (max(pss_ready, pss_settled) + (a["supervisor"][2] or 0)) / (1 << 20),
                "stages": len(b)}, None
    finally:
        if use_ns:
            sh(["ip", "netns", "del", ns])
        shutil.rmtree(out, ignore_errors=True)


# ------------------------------------------------------------------ live replay

def start_nats_in(inns, out):
    """A JetStream nats-server on the namespace's own loopback (plaintext: the measurement is
    of shipping, not of TLS), for ship.url; (process, url) or (None, why)."""
    if not shutil.which("nats-server"):
        return None, "nats-server is not installed"
    log = os.path.join(out, "nats.log")
    proc = subprocess.Popen(inns + ["nats-server", "-js", "-sd", os.path.join(out, "nats"),
                                    "-a", "127.0.0.1", "-p", "4222", "-l", log],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and proc.poll() is None:
        if os.path.exists(log) and "Server is ready" in open(log).read():
            return proc, "nats://127.0.0.1:4222"
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    return None, "nats-server did not start"


def run_live(flowseal, pcap, mbps, extra=(), linger=8.0, ship=False):
    """tcpreplay of `pcap` at `mbps` into a veth pair inside a network namespace of our own,
    `flowseal run -i` on the other end. Returns the packets sent, received and dropped by
    cause, and writerd's export latency (flow end due -> stored), or (None, why). ship: a
    JetStream server in the namespace too, ship.url at it, and shipd's latency (flow end due
    -> acked by JetStream)."""
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("tcpreplay"):
        return None, "needs root, ip and tcpreplay"
    ns = f"fslive{os.getpid()}"
    if sh(["ip", "netns", "add", ns]).returncode != 0:
        return None, "cannot create a network namespace"
    out = tempfile.mkdtemp(prefix="flowseal-live-")
    nats = None
    try:
        inns = ["ip", "netns", "exec", ns]
        sh(["ip", "-n", ns, "link", "add", "fsl0", "type", "veth", "peer", "name", "fsl1"])
        for dev in ("fsl0", "fsl1"):
            sh(["ip", "-n", ns, "link", "set", dev, "mtu", "9000", "up"])
        if ship:
            sh(["ip", "-n", ns, "link", "set", "lo", "up"])
            nats, url = start_nats_in(inns, out)
            if nats is None:
                return None, url
            extra = [*extra, "--set", f"ship.url={url}", "--set", "ship.insecure=true"]
        logf = os.path.join(out, "run.log")
        with open(logf, "w") as errlog:
            p = subprocess.Popen(inns + [flowseal, "run", "-i", "fsl0", "-o", os.path.join(out, "store"),
                                         "--instance", f"live{os.getpid()}",
                                         "--set", "supervisor.stats_interval_s=0", *extra],
                                 stdout=subprocess.DEVNULL, stderr=errlog)
            text = lambda: open(logf).read()
            deadline = time.monotonic() + 20
            while "listening on fsl0" not in text() and time.monotonic() < deadline and p.poll() is None:
                time.sleep(0.05)
            if "listening on fsl0" not in text():
                p.kill()
                p.wait()
                return None, f"the live run never listened: {text()[-500:]}"
            t0 = time.monotonic()
            r = sh(inns + ["tcpreplay", "-q", f"--mbps={mbps}", "-i", "fsl1", pcap], timeout=3600)
            replay_s = time.monotonic() - t0
            sent = re.search(r"Successful packets:\s+(\d+)", r.stdout)
            # Flows closed near the end need their linger (5 s) to expire before they end
            # naturally; ends at the stop are "shutdown" and carry no latency.
            time.sleep(linger)
            p.send_signal(signal.SIGINT)
            try:
                p.wait(120)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        log_text = text()
        num = lambda pat: int(m.group(1)) if (m := re.search(pat, log_text)) else None
        fig = {"mbps": mbps, "replay_s": replay_s, "sent": int(sent.group(1)) if sent else None,
               "received": num(r"packets\s+received (\d+)"),
               "kernel_dropped": num(r"dropped: ring full \d+, kernel (\d+)"),
               "ring_dropped": num(r"dropped: ring full (\d+)"),
               "exit": p.returncode}
        hist = re.search(r"export latency histogram \(bucket upper edge in us: flow ends\): (.*)", log_text)
        fig["latency_hist"] = [tuple(int(x) for x in e.split(":")) for e in hist.group(1).split()] if hist else []
        lat = re.search(r"export latency \(flow end due -> stored\): (.*)", log_text)
        fig["latency"] = lat.group(1).strip() if lat else None
        for name in ("p50", "p99", "p99.9"):
            m = lat and re.search(re.escape(name) + r" ([\d.]+) ms", lat.group(1))
            fig[f"latency_{name}_ms"] = float(m.group(1)) if m else None
        slat = re.search(r"ship latency \(flow end due -> acked by JetStream\): (.*)", log_text)
        fig["ship_latency"] = slat.group(1).strip() if slat else None
        for name in ("p50", "p99", "p99.9"):
            m = slat and re.search(re.escape(name) + r" ([\d.]+) ms", slat.group(1))
            fig[f"ship_latency_{name}_ms"] = float(m.group(1)) if m else None
        # flowd's own figure (flow end due -> published to the flowd->dedupd ring).
        flat = re.search(r"export latency \(flow end due -> flowd output ring\): (.*)", log_text)
        fig["flowd_latency"] = flat.group(1).strip() if flat else None
        for name in ("p50", "p99", "p99.9"):
            m = flat and re.search(re.escape(name) + r" ([\d.]+) ms", flat.group(1))
            fig[f"flowd_latency_{name}_ms"] = float(m.group(1)) if m else None
        if fig["sent"] and fig["received"] is not None:
            fig["drop_pct"] = 100.0 * max(fig["sent"] - fig["received"], 0) / fig["sent"]
        return fig, None
    finally:
        if nats is not None:
            nats.kill()
            nats.wait()
        sh(["ip", "netns", "del", ns])
        shutil.rmtree(out, ignore_errors=True)


def plot_latency_cdf(hist, plot_dir):
    """PNG of the export-latency CDF from writerd's histogram [(upper_us, count)], or why not."""
    if not shutil.which("gnuplot"):
        return None, "gnuplot is not installed: no latency CDF"
    if not hist:
        return None, "no flow ended naturally during the live run: no latency CDF"
    os.makedirs(plot_dir, exist_ok=True)
    data = os.path.join(plot_dir, "latency.dat")
    total, seen = sum(c for _, c in hist), 0
    with open(data, "w") as f:
        for upper_us, count in hist:
            seen += count
            f.write(f"{max(upper_us, 1) / 1000:.3f} {seen / total:.6f}\n")
    png = os.path.join(plot_dir, "export-latency-cdf.png")
    script = (f"set terminal pngcairo size 900,420 font ',10'\nset output '{png}'\n"
              "set xlabel 'export latency, flow end due -> stored (ms, log scale)'\n"
              "set ylabel 'fraction of flow ends'\nset logscale x\nset grid\nset key off\n"
              f"plot '{data}' using 1:2 with steps lw 2\n")
    r = sh(["gnuplot"], input=script)
    os.remove(data)
    return (png, None) if r.returncode == 0 else (None, f"gnuplot failed: {r.stderr[-300:]}")
