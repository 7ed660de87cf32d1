"""Shared set-up of the python tests (pytest): the build's binaries, test data, temp dirs.

meson passes what a test needs through the environment:
  FLOWSEAL            the supervisor binary of this build (the stage binaries sit beside it)
  FLOWSEAL_TEST_DATA  tests/data
  FLOWSEAL_SANITIZED  "1" in an ASan/UBSan build: tests allow more time there

When every test of a run is skipped (no root, no tcpreplay, ...), pytest's exit status becomes
77, which meson reports as SKIP: run-tests then counts it as skipped, and fails the run unless
tests/allowed-skips.txt allows it. A run that passes some tests and skips others passes.
"""
import glob
import os
import subprocess

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


def pytest_sessionfinish(session, exitstatus):
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or exitstatus != 0:
        return
    ran = sum(len(reporter.stats.get(kind, [])) for kind in ("passed", "failed", "error"))
    if ran == 0 and reporter.stats.get("skipped"):
        session.exitstatus = SKIP_EXIT
