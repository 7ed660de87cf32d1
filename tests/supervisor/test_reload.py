"""SIGHUP to the supervisor reloads its config file: the run goes on, a changed runtime key
is logged as applied, a changed start-up key as needing a restart, and the run still drains
to exit 0 with a store that verifies.

Environment: FLOWSEAL (the flowseal binary), FLOWSEAL_TEST_DATA (tests/data).
"""
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


def test_sighup_reloads_and_the_run_goes_on(run_dir):
    tmp, name = run_dir
    config = tmp / "flowseal.yaml"
    out = tmp / "out"
    write_config(config, 10, 64)
    # A long input: the run is still busy when the reload comes; it is stopped with SIGTERM.
    r = Run(["run", "-c", str(config), "-r", os.path.join(DATA, "sample.pcap"), "-o", str(out),
             "--instance", name, "--loop", "1000000", "--budget", "16"])
    try:
        assert r.wait_for_line("ready: every stage is up"), r.text()[-2000:]
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
        r.p.send_signal(signal.SIGTERM)
        code = r.p.wait(TIMEOUT)
    finally:
        if r.p.poll() is None:
            r.p.kill()
            r.p.wait()
    text = r.text()
    assert code == 0, text[-2000:]
    assert "restarts" not in next((l for l in text.splitlines() if l.strip().startswith("stages")), ""), \
        "no stage was restarted by the reload"
    v = subprocess.run([FLOWSEAL, "verify", str(out)], capture_output=True, text=True, timeout=TIMEOUT)
    assert v.returncode == 0, v.stdout + v.stderr
