"""Shared set-up of the python tests (pytest): the build's binaries, test data, temp dirs.

meson passes what a test needs through the environment:
  FLOWSEAL            the supervisor binary of this build (the stage binaries sit beside it)
  FLOWSEAL_TEST_DATA  tests/data
  FLOWSEAL_SANITIZED  "1" in an ASan/UBSan build: tests allow more time there

Fixtures for what several tests set up: temp dirs, instance names, `flowseal` run in the
foreground (run_flowseal) or in the background (background), a network namespace with a veth
pair (veth), and report() for figures a passing test should still print.

When every test of a run is skipped (no root, no tcpreplay, ...), pytest's exit status becomes
77, which meson reports as SKIP: run-tests then counts it as skipped, and fails the run unless
tests/allowed-skips.txt allows it. A run that passes some tests and skips others passes.
"""
import glob
import os
import shutil
import signal
import subprocess
import time

import pytest

SKIP_EXIT = 77  # meson: SKIP


def _env_path(name):
    value = os.environ.get(name)
    if not value:
        raise pytest.UsageError(f"{name} is not set: run this test through meson "
                                "(meson test -C build NAME)")
    return os.path.abspath(value)


@pytest.fixture(scope="session")
def flowseal():
    """Path of this build's `flowseal` binary."""
    return _env_path("FLOWSEAL")


@pytest.fixture(scope="session")
def data_dir():
    """tests/data: the captures every end-to-end test reads."""
    return _env_path("FLOWSEAL_TEST_DATA")


@pytest.fixture(scope="session")
def sanitized():
    """True in a sanitizer build, where every process runs several times slower."""
    return os.environ.get("FLOWSEAL_SANITIZED") == "1"


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory, request):
    """One temp directory for the tests of a module that share results (removed by pytest)."""
    return str(tmp_path_factory.mktemp(request.module.__name__))


@pytest.fixture(scope="session")
def instance():
    """instance(tag): an instance name of this test process, so parallel runs never share
    shared memory (each test passes its own tag). What a killed run left in /dev/shm under
    these names is removed at the end of the session."""
    prefix = f"t{os.getpid()}-"
    yield lambda tag: prefix + tag
    for leftover in glob.glob(f"/dev/shm/flowseal.{prefix}*"):
        try:
            os.remove(leftover)
        except FileNotFoundError:
            pass


@pytest.fixture(scope="session")
def run_flowseal(flowseal):
    """run_flowseal(args, timeout=120, **kw): `flowseal ARGS`, output captured as text."""
    def run(args, timeout=120, **kw):
        return subprocess.run([flowseal] + list(args), capture_output=True, text=True,
                              timeout=timeout, **kw)
    return run


@pytest.fixture(scope="session")
def report(request):
    """report(line): print a line past pytest's output capture, so that the figures of a
    passing test (rates, counts, what was set aside) still reach the test log."""
    capture = request.config.pluginmanager.getplugin("capturemanager")

    def write(line):
        with capture.global_and_fixture_disabled():
            print(line, flush=True)
    return write


STEP_TIMEOUT = 60  # s for any single command or wait of the background and veth fixtures


class BackgroundRun:
    """`flowseal ...` started in the background in a session of its own (the supervisor and
    the stages it starts, nothing else), its stdout and stderr in one log file."""

    def __init__(self, args, log_path, **kw):
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True, **kw)

    def text(self):
        with open(self.log_path) as f:
            return f.read()

    def wait_for(self, needle, timeout=STEP_TIMEOUT):
        """True once `needle` is in the log; False after `timeout` or once the run ended
        without it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.text():
                return True
            if self.proc.poll() is not None:
                return needle in self.text()
            time.sleep(0.05)
        return False

    def stop(self, timeout=STEP_TIMEOUT):
        """SIGINT (drain) and wait; returns the exit code. Killed if it does not end in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"flowseal did not drain within {timeout} s of SIGINT")

    def kill(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=STEP_TIMEOUT)

    def close(self):
        self.kill()
        self.log.close()

    def child_pid(self, exe_name):
        """The pid of the supervisor's child that runs `exe_name`, or None."""
        with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
            children = [int(p) for p in f.read().split()]
        for child in children:
            try:
                if os.readlink(f"/proc/{child}/exe").endswith(exe_name):
                    return child
            except OSError:
                continue
        return None


@pytest.fixture(scope="module")
def background(tmp_path_factory):
    """background(args, **popen_kw) -> BackgroundRun, its log in a temp dir of its own; a run
    still going at the end of the module is killed (its own process group only). Module-wide,
    so that module fixtures can run flowseal in the background too."""
    runs = []

    def start(args, **kw):
        log = tmp_path_factory.mktemp("background") / "run.log"
        runs.append(BackgroundRun(args, str(log), **kw))
        return runs[-1]
    yield start
    for r in runs:
        r.close()


def sh(*args, check=True, netns=None):
    """Runs a command (in network namespace `netns` if given); output captured as text."""
    cmd = (["ip", "netns", "exec", netns] if netns else []) + list(args)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=STEP_TIMEOUT)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {r.returncode}: {r.stderr.strip()}")
    return r


class Veth:
    """A network namespace (netns) and a veth pair, one end here (host), the other in the
    namespace (peer); names carry this process's pid, so parallel runs do not collide."""

    def __init__(self):
        pid = os.getpid()
        self.netns, self.host, self.peer = f"fsl{pid}", f"fsl{pid}a", f"fsl{pid}b"

    def create(self):
        try:
            sh("ip", "netns", "add", self.netns)
            sh("ip", "link", "add", self.host, "type", "veth", "peer", "name", self.peer)
            sh("ip", "link", "set", self.peer, "netns", self.netns)
            for end, ns in ((self.host, None), (self.peer, self.netns)):
                # No IPv6 means no router or neighbour solicitations of the kernel's own.
                sh("sysctl", "-q", "-w", f"net.ipv6.conf.{end}.disable_ipv6=1", netns=ns)
                sh("ip", "link", "set", end, "mtu", "9000", "up", netns=ns)
        except BaseException:
            self.remove()
            raise

    def run_in_netns(self, *args, check=True):
        """A command run inside the namespace (output captured as text)."""
        return sh(*args, check=check, netns=self.netns)

    def remove(self):
        # Deleting one end deletes the pair; deleting the namespace deletes the end in it.
        sh("ip", "link", "del", self.host, check=False)
        sh("ip", "netns", "del", self.netns, check=False)


def _why_no_veth():
    """None if this machine can make a namespace and a veth pair and replay into it."""
    if os.geteuid() != 0:
        return "not root: creating a network namespace and a veth pair needs root"
    for tool in ("ip", "tcpreplay"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    probe = f"fslprobe{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True,
                       timeout=STEP_TIMEOUT)
    if r.returncode != 0:
        return f"cannot create a network namespace: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=STEP_TIMEOUT)
    return None


@pytest.fixture(scope="module")
def veth():
    """A Veth with both ends up (MTU 9000, IPv6 off, so every frame on the link is one a test
    sent) to replay captures into with tcpreplay; the module's tests are skipped without root,
    ip, tcpreplay or network namespaces. Removed whatever happened."""
    why = _why_no_veth()
    if why:
        pytest.skip(why)
    v = Veth()
    v.create()
    yield v
    v.remove()


def pytest_sessionfinish(session, exitstatus):
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or exitstatus != 0:
        return
    ran = sum(len(reporter.stats.get(kind, [])) for kind in ("passed", "failed", "error"))
    if ran == 0 and reporter.stats.get("skipped"):
        session.exitstatus = SKIP_EXIT
