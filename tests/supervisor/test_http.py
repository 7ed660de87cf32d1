"""The supervisor's HTTP endpoint (supervisor.http_listen): /metrics scraped by a real
Prometheus server and checked by promtool, /status.json against `flowseal status --json`,
the status page (in headless Chromium when it is installed), and the refusals: a
non-loopback bind without supervisor.http_allow_remote (exit 78 before anything runs) and a
port in use (a clear error naming the address).

Environment: FLOWSEAL (the flowseal binary), FLOWSEAL_TEST_DATA (tests/data),
FLOWSEAL_SANITIZED (1 under ASan: longer waits).
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from runlog import LoggedRun, remove_instance_shm

FLOWSEAL = os.environ["FLOWSEAL"]
DATA = os.environ["FLOWSEAL_TEST_DATA"]
SANITIZED = os.environ.get("FLOWSEAL_SANITIZED") == "1"
TIMEOUT = 240 if SANITIZED else 120
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
CHROMIUM = shutil.which("chromium")
STAGES = ["capture", "flowd[0]", "dedupd", "signerd", "writerd"]


def wait_until(what, check, seconds=TIMEOUT, step=0.2):
    """Polls `check` until it returns something true (an event, not a time) and returns it."""
    deadline = time.time() + seconds
    last = None
    while time.time() < deadline:
        try:
            last = check()
        except (OSError, ValueError, KeyError, IndexError) as e:
            last = e
        else:
            if last:
                return last
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def get(url, timeout=30):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.headers.get("Content-Type", ""), r.read().decode()


class Run(LoggedRun):
    """`flowseal run` in the background, its output collected line by line."""

    def __init__(self, args):
        super().__init__([FLOWSEAL] + args, TIMEOUT)

    def wait_for(self, pattern, seconds=TIMEOUT):
        """The first match of `pattern` in the output; fails if the run ends first."""
        m = self.search(pattern, seconds)
        assert m, f"no /{pattern}/ in the run's output:\n{self.text()[-3000:]}"
        return m


def serving(run, instance):
    """`run` once its HTTP endpoint serves and every stage is up, with base (its URL), port
    and instance set."""
    run.port = int(run.wait_for(r"http: serving .* on 127\.0\.0\.1:(\d+)").group(1))
    run.wait_for("ready: every stage is up")
    run.base = f"http://127.0.0.1:{run.port}"
    run.instance = instance
    return run


@pytest.fixture
def instance(tmp_path):
    name = f"http{os.getpid()}_{time.monotonic_ns() % 100000}"
    yield name
    remove_instance_shm(name)


@pytest.fixture
def looping_run(tmp_path, instance):
    """A long run over sample.pcap (looped) serving HTTP on a free loopback port."""
    run = Run(["run", "-r", os.path.join(DATA, "sample.pcap"), "-o", str(tmp_path / "out"),
               "--instance", instance, "--budget", "32",
               "--set", "capture.loop=1000000",
               "--set", "supervisor.http_listen=127.0.0.1:0",
               "--set", "supervisor.stats_interval_s=0",
               # The Prometheus test stops capture (SIGSTOP) to freeze the counters: the
               # heartbeat check must not replace it meanwhile.
               "--set", "supervisor.heartbeat_timeout_ms=600000"])
    try:
        yield serving(run, instance)
    finally:
        run.stop()


def status_json(name):
    out = subprocess.run([FLOWSEAL, "status", "--json", "--instance", name], check=True,
                         capture_output=True, text=True, timeout=60).stdout
    return json.loads(out)


def stage(status, name):
    return next(s for s in status["stages"] if s["stage"] == name)


def stage_pid(status, name):
    return stage(status, name)["pid"]


# ---- a strict reading of the text exposition format (0.0.4) ---------------------------------

METRIC_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
SAMPLE = re.compile(rf"^({METRIC_NAME})(?:\{{({LABEL}(?:,{LABEL})*)?\}})? "
                    r"([-+]?(?:\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+|Inf|NaN))(?: -?\d+)?$")


def parse_exposition(text):
    """{(name, labels): value}; fails on anything the format does not allow."""
    assert text.endswith("\n"), "the exposition ends with a newline"
    families, samples, seen_help = {}, {}, set()
    current = None
    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            assert re.fullmatch(METRIC_NAME, name) and name not in seen_help, f"line {n}: {line}"
            seen_help.add(name)
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            assert name not in families, f"line {n}: second TYPE for {name}"
            families[name] = kind
            current = name
        elif line.startswith("#") or not line:
            continue
        else:
            m = SAMPLE.match(line)
            assert m, f"line {n}: not a sample: {line!r}"
            name, labels, value = m.group(1), m.group(2) or "", m.group(3)
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            assert current in (name, base), f"line {n}: {name} outside its family ({current})"
            key = (name, labels)
            assert key not in samples, f"line {n}: duplicate sample {key}"
            samples[key] = float(value)
            if families[current] == "counter":
                assert name.endswith("_total"), f"line {n}: counter {name} without _total"
    for name in families:
        assert name in seen_help, f"{name} has no HELP"
    return families, samples


def test_metrics_are_prometheus_text(looping_run):
    # Once capture has counted packets (ready comes before the first batch is counted).
    wait_until("packets counted", lambda: stage(status_json(looping_run.instance), "capture")["in_total"] > 0)
    status, content_type, body = get(looping_run.base + "/metrics")
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    families, samples = parse_exposition(body)
    # promtool (shipped with Debian's prometheus) reads it too, lint included.
    check = subprocess.run([PROMTOOL, "check", "metrics"], input=body, capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    for name, kind in [("flowseal_packets_received_total", "counter"),
                       ("flowseal_packets_processed_total", "counter"),
                       ("flowseal_packets_sampled_out_total", "counter"),
                       ("flowseal_packets_dropped_total", "counter"),
                       ("flowseal_flows_active", "gauge"),
                       ("flowseal_records_out_total", "counter"),
                       ("flowseal_batches_stored_total", "counter"),
                       ("flowseal_bytes_stored_total", "counter"),
                       ("flowseal_stage_cpu_seconds_total", "counter"),
                       ("flowseal_stage_pss_bytes", "gauge"),
                       ("flowseal_stage_restarts_total", "counter"),
                       ("flowseal_ring_fill_ratio", "gauge"),
                       ("flowseal_pressure_level", "gauge"),
                       ("flowseal_export_latency_seconds", "histogram")]:
        assert families.get(name) == kind, f"{name}: {families.get(name)}"
    for cause in ("kernel", "ring_full", "writer_stalled"):
        assert ("flowseal_packets_dropped_total", f'cause="{cause}"') in samples
    for s in STAGES:
        assert samples[("flowseal_stage_pss_bytes", f'stage="{s}"')] > 0, s
    assert samples[("flowseal_packets_received_total", "")] > 0
    # The histogram's buckets rise to +Inf, which equals _count.
    buckets = sorted((float(re.search(r'le="([^"]+)"', labels).group(1)), value)
                     for (name, labels), value in samples.items()
                     if name == "flowseal_export_latency_seconds_bucket")
    assert buckets and buckets[-1][0] == float("inf")
    assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:]))
    assert buckets[-1][1] == samples[("flowseal_export_latency_seconds_count", "")]


def test_status_json_is_the_status_command(looping_run):
    status, content_type, body = get(looping_run.base + "/status.json")
    assert status == 200 and content_type == "application/json"
    served = json.loads(body)
    printed = status_json(looping_run.instance)
    assert served.pop("memory_budget_bytes") == 32 << 20
    # The same document (one function makes both); only the moving numbers differ.
    assert list(served) == list(printed)
    assert [s["stage"] for s in served["stages"]] == STAGES
    assert [list(s) for s in served["stages"]] == [list(s) for s in printed["stages"]]
    assert served["rings"].keys() == printed["rings"].keys()
    assert served["drops"].keys() == printed["drops"].keys()
    assert served["instance"] == looping_run.instance
    # The page and the refusals.
    status, content_type, page = get(looping_run.base + "/")
    assert status == 200 and content_type.startswith("text/html")
    assert "status.json" in page and "<script" in page
    assert "http://" not in page and "https://" not in page, "the page loads nothing from outside"
    with pytest.raises(urllib.error.HTTPError) as e:
        get(looping_run.base + "/nothing")
    assert e.value.code == 404
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(urllib.request.Request(looping_run.base + "/metrics", data=b"x",
                                                      method="POST"), timeout=30)
    assert e.value.code == 405


@pytest.fixture
def prometheus(tmp_path, looping_run):
    """A real Prometheus server scraping the run's /metrics every second."""
    with socket.socket() as s:  # the kernel's free port; Prometheus binds it right after
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
                      "scrape_configs:\n  - job_name: flowseal\n    static_configs:\n"
                      f"      - targets: ['127.0.0.1:{looping_run.port}']\n")
    log = open(tmp_path / "prometheus.log", "w")
    p = subprocess.Popen([PROMETHEUS, f"--config.file={config}",
                          f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                          f"--web.listen-address=127.0.0.1:{port}"],
                         stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until("Prometheus ready", lambda: p.poll() is None and get(base + "/-/ready")[0] == 200)

        def target_up():
            targets = json.loads(get(base + "/api/v1/targets")[2])["data"]["activeTargets"]
            return targets and targets[0]["health"] == "up"
        wait_until("the flowseal target up", target_up)
        yield base
    finally:
        p.terminate()
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        log.close()


def query(base, expr):
    """The value of a one-series instant query, or None while there is none."""
    url = base + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    result = json.loads(get(url)[2])["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def test_prometheus_scrapes_the_run(looping_run, prometheus):
    name = looping_run.instance
    # The counters move while the run does: capture is stopped (SIGSTOP) so that the figure
    # Prometheus scraped and the one `status --json` reads are of one moment.
    capture_pid = stage_pid(status_json(name), "capture")
    os.kill(capture_pid, signal.SIGSTOP)
    try:
        def frozen():
            a = stage(status_json(name), "capture")["in_total"]
            b = stage(status_json(name), "capture")["in_total"]
            return a if a == b and a > 0 else None
        received = wait_until("capture's counter to stand still", frozen)
        wait_until(f"Prometheus to scrape received = {received}",
                   lambda: query(prometheus, "flowseal_packets_received_total") == received)
    finally:
        os.kill(capture_pid, signal.SIGCONT)

    restarts = 'flowseal_stage_restarts_total{stage="flowd[0]"}'
    before = stage(status_json(name), "flowd[0]")["restarts"]
    wait_until("Prometheus to scrape flowd's restart count",
               lambda: query(prometheus, restarts) == before)
    subprocess.run([FLOWSEAL, "restart", "flowd", "--instance", name], check=True,
                   timeout=TIMEOUT)
    wait_until("the restart to reach Prometheus",
               lambda: query(prometheus, restarts) == before + 1)
    assert stage(status_json(name), "flowd[0]")["restarts"] == before + 1


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_log_json_has_the_newest_lines_of_the_supervisor_and_the_stages(looping_run):
    def lines():
        status, content_type, body = get(looping_run.base + "/log.json")
        assert status == 200 and content_type == "application/json"
        log = json.loads(body)
        assert log["added"] >= len(log["lines"])
        return log["lines"]
    # The supervisor's own line and a stage's (it passes through the supervisor while the
    # page shows the log), each as it is printed: time, level, who, what.
    got = wait_until("the log to hold the supervisor's ready line and dedupd's first line",
                     lambda: (lambda ls: ls if any(" info flowseal: ready: every stage is up" in l
                                                   for l in ls)
                              and any(" info dedupd: dedup: report interval" in l for l in ls)
                              else None)(lines()))
    assert all(re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3} \w+ \S+: ", l) for l in got), got
    # Still on the run's stderr as well.
    assert looping_run.wait_for(r"info dedupd: dedup: report interval")


def test_status_page_in_headless_chromium(looping_run, tmp_path):
    """The page as a browser runs it: the DOM shows the five stages with non-zero rates,
    and the run's recent log lines."""
    def rendered():
        dom = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=5000",
             "--dump-dom", looping_run.base + "/"],
            capture_output=True, text=True, timeout=TIMEOUT).stdout
        boxes = dict(re.findall(r'data-stage="([^"]+)" data-in-rate="(\d+)"', dom))
        return (boxes, dom) if all(float(boxes.get(s, 0)) > 0 for s in STAGES) else None
    boxes, dom = wait_until("the page to show five stages with rates", rendered, step=1)
    assert set(boxes) == set(STAGES)
    log_lines = re.findall(r'<div class="(\w*)" data-log-line="">([^<]*)</div>', dom)
    assert any("flowseal: ready: every stage is up" in text for _, text in log_lines), \
        f"the page shows the recent log: {log_lines[-5:]}"
    assert all(level in ("info", "warning", "error", "critical", "debug", "")
               for level, _ in log_lines)


def test_non_loopback_bind_is_refused(tmp_path, instance):
    out = tmp_path / "out"
    # (--set takes a string key's value as typed: "[::]:9108" needs no YAML quoting.)
    for value in ["0.0.0.0:9108", "192.0.2.1:9108", "[::]:9108"]:
        r = subprocess.run([FLOWSEAL, "run", "-r", os.path.join(DATA, "sample.pcap"), "-o", str(out),
                            "--instance", instance, "--set", f"supervisor.http_listen={value}"],
                           capture_output=True, text=True, timeout=TIMEOUT)
        assert r.returncode == 78, r.stderr
        assert "http_allow_remote" in r.stderr and value in r.stderr, r.stderr
        assert not out.exists(), "nothing ran"
    for bad in ["9108", "example.com:9108", "127.0.0.1:70000", "[::1:9108"]:
        r = subprocess.run([FLOWSEAL, "config", "check", "--set", f"supervisor.http_listen={bad}"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 78 and "supervisor.http_listen" in r.stderr, (bad, r.stderr)
    # Allowed when asked for (config check only: nothing listens on a test host's addresses).
    r = subprocess.run([FLOWSEAL, "config", "check", "--set", "supervisor.http_listen=0.0.0.0:9108",
                        "--set", "supervisor.http_allow_remote=true"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert 'http_listen: "0.0.0.0:9108"' in r.stdout


def test_port_in_use_is_a_clear_error(tmp_path, instance):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = "127.0.0.1:%d" % taken.getsockname()[1]
        r = subprocess.run([FLOWSEAL, "run", "-r", os.path.join(DATA, "sample.pcap"), "-o",
                            str(tmp_path / "out"), "--instance", instance,
                            "--set", f"supervisor.http_listen={address}"],
                           capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 78, r.stderr
    assert address in r.stderr and "in use" in r.stderr, r.stderr
    assert "ready: every stage is up" not in r.stderr
    leftovers = [f for f in os.listdir("/dev/shm") if f.startswith(f"flowseal.{instance}.")]
    assert not leftovers, leftovers


# ---- shipd's slot: shipping and the exports ------------------------------------------------

SHIP_METRICS = [
    ("flowseal_ship_batches_published_total", "counter"),
    ("flowseal_ship_records_published_total", "counter"),
    ("flowseal_ship_batches_acked_total", "counter"),
    ("flowseal_ship_records_acked_total", "counter"),
    ("flowseal_ship_inflight_batches", "gauge"),
    ("flowseal_ship_retried_total", "counter"),
    ("flowseal_ship_lag_batches", "gauge"),
    ("flowseal_ship_duplicates_total", "counter"),
    ("flowseal_ship_connect_failures_total", "counter"),
    ("flowseal_ship_tls_refused_total", "counter"),
    ("flowseal_ship_unreachable_seconds_total", "counter"),
    ("flowseal_ship_store_errors_total", "counter"),
    ("flowseal_ship_shipped_seq", "gauge"),
    ("flowseal_ship_dropped_records_total", "counter"),
    ("flowseal_ship_dropped_segments_total", "counter"),
    ("flowseal_export_ipfix_batches_exported_total", "counter"),
    ("flowseal_export_ipfix_records_sent_total", "counter"),
    ("flowseal_export_ipfix_send_failures_total", "counter"),
    ("flowseal_export_ipfix_lag_batches", "gauge"),
    ("flowseal_export_ipfix_exported_seq", "gauge"),
    ("flowseal_export_kafka_batches_delivered_total", "counter"),
    ("flowseal_export_kafka_records_delivered_total", "counter"),
    ("flowseal_export_kafka_delivery_failures_total", "counter"),
    ("flowseal_export_kafka_lag_batches", "gauge"),
    ("flowseal_export_kafka_exported_seq", "gauge"),
]


class UdpCollector:
    """A UDP socket on 127.0.0.1 standing in for an IPFIX collector: counts the datagrams
    and the IPFIX messages (version 10 headers) it receives."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.messages = 0
        self.running = True
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        while self.running:
            try:
                data = self.sock.recv(65535)
            except socket.timeout:
                continue
            except OSError:
                return
            if len(data) >= 16 and data[0:2] == b"\x00\x0a":
                self.messages += 1

    def close(self):
        self.running = False
        self.thread.join(10)
        self.sock.close()


@pytest.fixture
def exporting_run(tmp_path, instance):
    """A long run over sample.pcap (looped) exporting IPFIX over UDP to the test's socket:
    the run has shipd, its sixth stage, and shipd's slot in the control block."""
    collector = UdpCollector()
    run = Run(["run", "-r", os.path.join(DATA, "sample.pcap"), "-o", str(tmp_path / "out"),
               "--instance", instance, "--budget", "64",
               "--set", "capture.loop=1000000",
               "--set", "supervisor.http_listen=127.0.0.1:0",
               "--set", "supervisor.stats_interval_s=0",
               "--set", f"export.ipfix.url=udp://127.0.0.1:{collector.port}",
               "--set", "export.ipfix.mode=uniflow"])
    try:
        run.collector = collector
        yield serving(run, instance)
    finally:
        run.stop()
        collector.close()


def test_export_metrics_and_shipd_on_the_page(exporting_run, tmp_path):
    run = exporting_run
    wait_until("IPFIX messages at the test's collector", lambda: run.collector.messages > 0)
    families, samples = parse_exposition(get(run.base + "/metrics")[2])
    check = subprocess.run([PROMTOOL, "check", "metrics"], input=get(run.base + "/metrics")[2],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    for name, kind in SHIP_METRICS:
        assert families.get(name) == kind, f"{name}: {families.get(name)}"
    # Every metric is in docs/OPERATIONS.md's table.
    with open(os.path.join(DATA, "..", "..", "docs", "OPERATIONS.md")) as f:
        documented = set(re.findall(r"^\| `(flowseal_[a-z_]+)`", f.read(), re.M))
    assert set(families) <= documented, sorted(set(families) - documented)
    # shipd is a stage like the others: up, its memory and restarts.
    assert samples[("flowseal_stage_up", 'stage="shipd"')] == 1
    assert samples[("flowseal_stage_pss_bytes", 'stage="shipd"')] > 0
    assert ("flowseal_stage_restarts_total", 'stage="shipd"') in samples

    # /status.json and `status --json` carry the same "ship" and "export" objects.
    served = json.loads(get(run.base + "/status.json")[2])
    printed = status_json(run.instance)
    assert [s["stage"] for s in served["stages"]] == STAGES + ["shipd"]
    assert list(served["export"]) == ["ipfix", "kafka"] == list(printed["export"])
    assert list(served["export"]["ipfix"]) == list(printed["export"]["ipfix"])
    assert list(served["ship"]) == list(printed["ship"])

    # The page draws shipd after writerd, and the export figures.
    if CHROMIUM is not None:
        def rendered():
            dom = subprocess.run(
                [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=5000",
                 "--dump-dom", run.base + "/"],
                capture_output=True, text=True, timeout=TIMEOUT).stdout
            return dom if 'data-stage="shipd"' in dom and 'data-ship="ipfix.records_sent"' in dom \
                else None
        wait_until("the page to show shipd and the IPFIX figures", rendered, step=1)


def test_export_counters_move(exporting_run):
    """What shipd publishes in its slot reaches /metrics: IPFIX records sent, batches
    exported, and the exported position."""
    run = exporting_run
    wait_until("IPFIX messages at the test's collector", lambda: run.collector.messages > 0)

    def sent():
        samples = parse_exposition(get(run.base + "/metrics")[2])[1]
        return samples if samples[("flowseal_export_ipfix_records_sent_total", "")] > 0 else None
    samples = wait_until("flowseal_export_ipfix_records_sent_total > 0", sent)
    assert samples[("flowseal_export_ipfix_batches_exported_total", "")] > 0

    # The position is the last batch exported: 0 after the first one (and shipd publishes it
    # after the batch count), so wait for it to move past batch 0.
    def moved():
        samples = parse_exposition(get(run.base + "/metrics")[2])[1]
        return samples if samples[("flowseal_export_ipfix_exported_seq", "")] > 0 else None
    samples = wait_until("flowseal_export_ipfix_exported_seq > 0", moved)
    assert samples[("flowseal_export_kafka_records_delivered_total", "")] == 0
