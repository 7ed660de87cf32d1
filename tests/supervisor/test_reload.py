"""SIGHUP to the supervisor reloads its config file: the run goes on, a changed runtime key
is logged as applied, a changed start-up key as needing a restart, and the run still drains
to exit 0 with a store that verifies. A file that `config check` would refuse (its memory plan
cannot run) is refused whole on reload, every reason named, and `status` counts it.

Environment: FLOWSEAL (the flowseal binary), FLOWSEAL_TEST_DATA (tests/data).
"""
import contextlib
import json
import os
import re
import signal
import subprocess

import pytest

from runlog import LoggedRun, remove_instance_shm

FLOWSEAL = os.environ["FLOWSEAL"]
DATA = os.environ["FLOWSEAL_TEST_DATA"]
TIMEOUT = 240


class Run(LoggedRun):
    def __init__(self, args):
        super().__init__([FLOWSEAL] + args, TIMEOUT)

    def wait_for_line(self, needle, seconds=TIMEOUT):
        """Until a log line holds `needle` (an event, not a time); False if the run ended first."""
        return self.search(re.escape(needle), seconds) is not None


@pytest.fixture
def run_dir(tmp_path):
    name = f"reload{os.getpid()}"
    yield tmp_path, name
    remove_instance_shm(name)


def write_config(path, max_restarts, batch_records):
    path.write_text("supervisor:\n"
                    f"  max_restarts: {max_restarts}\n"
                    "  stats_interval_s: 0\n"
                    "seal:\n"
                    f"  batch_records: {batch_records}\n")


@contextlib.contextmanager
def busy_run(config, out, name):
    """A run under `config` that is still busy (sample.pcap looped) when the test sends its
    signals: yields it once every stage is up, then stops it with SIGTERM, and checks that it
    drains to exit 0 and that its store verifies."""
    r = Run(["run", "-c", str(config), "-r", os.path.join(DATA, "sample.pcap"), "-o", str(out),
             "--instance", name, "--loop", "1000000", "--budget", "16"])
    try:
        assert r.wait_for_line("ready: every stage is up"), r.text()[-2000:]
        yield r
        r.p.send_signal(signal.SIGTERM)
        code = r.p.wait(TIMEOUT)
    finally:
        if r.p.poll() is None:
            r.p.kill()
            r.p.wait()
    assert code == 0, r.text()[-2000:]
    v = subprocess.run([FLOWSEAL, "verify", str(out)], capture_output=True, text=True,
                       timeout=TIMEOUT)
    assert v.returncode == 0, v.stdout + v.stderr


def test_sighup_reloads_and_the_run_goes_on(run_dir):
    tmp, name = run_dir
    config = tmp / "flowseal.yaml"
    out = tmp / "out"
    write_config(config, 10, 64)
    with busy_run(config, out, name) as r:
        write_config(config, 42, 128)
        r.p.send_signal(signal.SIGHUP)
        assert r.wait_for_line("reload: supervisor.max_restarts: 10 -> 42 (applied)"), r.text()[-2000:]
        assert r.wait_for_line("reload: seal.batch_records: 64 -> 128 (needs a restart"), r.text()[-2000:]
        assert r.p.poll() is None, "the run goes on after SIGHUP"
        # A file that does not load is reported and the run goes on unchanged.
        config.write_text("supervisor:\n  max_restarts: many\n")
        r.p.send_signal(signal.SIGHUP)
        assert r.wait_for_line("keeping the running configuration"), r.text()[-2000:]
        assert r.p.poll() is None
    assert "restarts" not in next((l for l in r.text().splitlines()
                                   if l.strip().startswith("stages")), ""), \
        "no stage was restarted by the reload"


def status(name, *extra):
    return subprocess.run([FLOWSEAL, "status", "--instance", name, *extra], capture_output=True,
                          text=True, timeout=60)


def test_a_reload_that_config_check_would_refuse_is_refused_whole(run_dir):
    """A file whose memory plan cannot run (8 shards in 16 MiB; a batch no writer-ring frame
    carries) is refused on SIGHUP as `config check` refuses it: every reason is logged naming
    the file, its runtime keys are not applied either, `status` counts the refusal, and the
    run goes on to exit 0 with a store that verifies."""
    tmp, name = run_dir
    config = tmp / "flowseal.yaml"
    out = tmp / "out"
    write_config(config, 10, 64)
    with busy_run(config, out, name) as r:
        check = subprocess.run([FLOWSEAL, "config", "check", "-c", str(config), "--set",
                                "memory.budget_mb=16", "--set", "flowd.shards=8", "--set",
                                "seal.batch_records=100000"], capture_output=True, text=True,
                               timeout=60)
        assert check.returncode == 78, check.stdout + check.stderr
        config.write_text("supervisor:\n  max_restarts: 42\n  stats_interval_s: 0\n"
                          "flowd:\n  shards: 8\nseal:\n  batch_records: 100000\n")
        r.p.send_signal(signal.SIGHUP)
        assert r.wait_for_line("refused for 2 reason(s); keeping the running configuration"), \
            r.text()[-3000:]
        text = r.text()
        refused = [l for l in text.splitlines() if "reload (SIGHUP) refused: " + str(config) in l]
        assert any("memory.budget_mb=16 is below" in l and "flowd.shards=8" in l for l in refused), text[-3000:]
        assert any("seal.batch_records=100000" in l for l in refused), text[-3000:]
        assert "(applied)" not in text, "a refused reload applies nothing, runtime keys included"
        assert r.p.poll() is None, "the run goes on after a refused reload"
        s = status(name)
        assert s.returncode == 0, s.stdout + s.stderr
        assert "reloads (SIGHUP): 0 applied, 1 refused" in s.stdout, s.stdout

        # The same runtime key in a file that can run is applied: it was still 10.
        write_config(config, 42, 64)
        r.p.send_signal(signal.SIGHUP)
        assert r.wait_for_line("reload: supervisor.max_restarts: 10 -> 42 (applied)"), r.text()[-2000:]
        js = status(name, "--json")
        assert js.returncode == 0, js.stdout + js.stderr
        assert json.loads(js.stdout)["reloads"] == {"applied": 1, "refused": 1}, js.stdout
