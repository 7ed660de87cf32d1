#!/usr/bin/env python3
"""Unprivileged stages (supervisor.user) through the real binaries, as root.

Run by meson as `python3 -m pytest -q privilege_test.py`; environment: FLOWSEAL, FLOWSEAL_TEST_DATA,
FLOWSEAL_SANITIZED (see tests/conftest.py).

Needs root (every test skipped, exit 77, otherwise). Makes a throwaway system user (useradd --system,
removed with userdel at the end; `nobody` if useradd is missing) and:
  - runs `flowseal run -r ... --set supervisor.user=USER` and, while it runs, reads
    /proc/PID/status of every stage: flowd, dedupd, signerd and writerd have the user's uid
    and gid in all four slots, no supplementary groups, CapEff/CapPrm/CapAmb 0 and
    NoNewPrivs 1; every shared-memory object of the instance belongs to the user with mode
    0600; signerd holds no descriptor of the key file (it read the one it inherited and
    closed it); the run exits 0, the store verifies and holds the same records as a run of
    the same input as root; the segments belong to the user; the private key is still
    root's with mode 0600;
  - supervisor.user naming no user is a config error (exit 78) naming the key;
  - an existing writer.dir the user cannot write is refused before any stage starts
    (exit 78), the message naming writer.dir and the user, no shared memory left behind.
"""
import glob
import json
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import threading
import time

import pytest

FLOWSEAL = os.environ["FLOWSEAL"]
DATA = os.environ["FLOWSEAL_TEST_DATA"]
SANITIZED = os.environ.get("FLOWSEAL_SANITIZED") == "1"
CAPTURE = os.path.join(DATA, "sample.pcap")
LOOP = 300 if SANITIZED else 2500  # 1-2 s on an idle machine: long enough to look at the stages while they run
TIMEOUT = 240
UNPRIVILEGED = ["flowd", "dedupd", "signerd", "writerd"]
STAGES = ["capture"] + UNPRIVILEGED

def instance(tag):
    return f"pv{os.getpid()}-{tag}"


def run_args(out, tag, extra=()):
    return [FLOWSEAL, "run", "-r", CAPTURE, "-o", out, "--set", f"supervisor.instance={instance(tag)}",
            "--set", f"capture.loop={LOOP}", "--set", "supervisor.stats_interval_s=0",
            "--set", "dedup.enabled=false", "--budget", "16"] + list(extra)


def stage_pids(parent):
    found = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            exe = os.path.basename(os.readlink(f"/proc/{pid}/exe"))
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and exe.startswith("flowseal-"):
            found[exe[len("flowseal-"):]] = int(pid)
    return found


def status_of(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.split()
    return fields


def records(out):
    r = subprocess.run([FLOWSEAL, "cat", out, "--events"], capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0, f"cat {out} exits 0 ({r.stderr[-500:]})"
    keys = ("uid", "event", "event_number", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p",
            "proto", "orig_pkts", "resp_pkts", "orig_ip_bytes", "resp_ip_bytes", "end_reason", "ts")
    events = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    return sorted(tuple(e[k] for k in keys) for e in events)


def verify(out):
    v = subprocess.run([FLOWSEAL, "verify", out], capture_output=True, text=True, timeout=TIMEOUT)
    return v.returncode == 0, (v.stdout + v.stderr)[-1000:]


def make_user(report):
    name = f"fsu{os.getpid() % 1000000}"
    if shutil.which("useradd"):
        r = subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                           capture_output=True, text=True)
        if r.returncode == 0:
            return pwd.getpwnam(name), True
        report(f"   useradd failed ({r.stderr.strip()}): using nobody")
    return pwd.getpwnam("nobody"), False


@pytest.fixture(scope="module", autouse=True)
def needs_root():
    """Every test is skipped without root (then pytest exits 77, see tests/conftest.py: a
    module-level skip would collect nothing, exit 5, which meson counts as a failure)."""
    if os.geteuid() != 0:
        pytest.skip("needs root (switching users)")


@pytest.fixture(scope="module")
def tmp():
    """A temp dir the user can reach into (pytest's own temp dirs are root's, mode 0700)."""
    d = tempfile.mkdtemp(prefix="flowseal-privilege-")
    os.chmod(d, 0o711)  # the user reaches the directories inside, not the listing
    yield d
    shutil.rmtree(d, ignore_errors=True)
    for leftover in glob.glob(f"/dev/shm/flowseal.pv{os.getpid()}-*"):
        os.remove(leftover)


@pytest.fixture(scope="module")
def user(report):
    """A throwaway system user (removed at the end), or `nobody` without useradd."""
    u, made = make_user(report)
    report(f"user {u.pw_name} (uid {u.pw_uid}, gid {u.pw_gid})"
           f"{' made for this test' if made else ''}")
    yield u
    if made:
        subprocess.run(["userdel", u.pw_name], capture_output=True)


def test_unprivileged_run(tmp, user, report):
    tag = "run"
    out = os.path.join(tmp, "store")
    seen = {}
    p = subprocess.Popen(run_args(out, tag, ["--set", f"supervisor.user={user.pw_name}"]),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(p.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.time() + 60
        while time.time() < deadline and p.poll() is None:
            pids = stage_pids(p.pid)
            if all(s in pids for s in STAGES) and "ready: every stage is up" in "".join(lines):
                try:
                    seen = {s: (pid, status_of(pid)) for s, pid in pids.items()}
                    seen["fds:signerd"] = [os.readlink(f"/proc/{pids['signerd']}/fd/{fd}")
                                           for fd in os.listdir(f"/proc/{pids['signerd']}/fd")]
                    seen["shm"] = {path: os.stat(path) for path in
                                   glob.glob(f"/dev/shm/flowseal.{instance(tag)}.*")}
                except OSError:  # a stage ended between the listing and the read
                    seen = {}
                    continue
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
        f"the run with supervisor.user exits 0 ({p.returncode}: {text[-2000:]})"
    assert all(s in seen for s in STAGES), f"every stage was seen running ({sorted(seen)})"
    uid, gid = str(user.pw_uid), str(user.pw_gid)
    for s in UNPRIVILEGED:
        pid, st = seen[s]
        report(f"   {s} (pid {pid}): Uid {st['Uid']} Gid {st['Gid']} Groups {st.get('Groups', [])} "
               f"CapEff {st['CapEff'][0]} NoNewPrivs {st['NoNewPrivs'][0]}")
        assert st["Uid"] == [uid] * 4, \
            f"{s} runs as {user.pw_name}: real, effective, saved and fs uid ({st['Uid']})"
        assert st["Gid"] == [gid] * 4, f"{s} runs with the user's gid ({st['Gid']})"
        assert st.get("Groups", []) == [], f"{s} has no supplementary groups ({st.get('Groups')})"
        for caps in ("CapEff", "CapPrm", "CapAmb"):
            assert int(st[caps][0], 16) == 0, f"{s} has no capabilities in {caps} ({st[caps][0]})"
        assert st["NoNewPrivs"] == ["1"], f"{s} cannot gain privileges by exec (NoNewPrivs)"
    assert seen["capture"][1]["Uid"][0] == "0", \
        "capture (offline: no capture.user) still starts as root"
    # With a user the key lives in a root directory beside writer.dir (writer.dir is the
    # user's, who could otherwise swap the key); its public half is copied into out/keys.
    key = out.rstrip("/") + ".keys/flowseal.key"
    assert os.path.isfile(os.path.join(out, "keys", "flowseal.pub")), \
        "the public key is copied into writer.dir/keys for verify"
    assert not [l for l in seen["fds:signerd"] if l == key], \
        f"signerd holds no descriptor of the key file once it has read it ({seen['fds:signerd']})"
    assert len(seen["shm"]) >= 6, f"the instance's shared memory was seen ({sorted(seen['shm'])})"
    for path, st in seen["shm"].items():
        assert st.st_uid == user.pw_uid and stat.S_IMODE(st.st_mode) == 0o600, \
            f"{path} belongs to {user.pw_name} with mode 0600 (uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o})"
    ok, why = verify(out)
    assert ok, f"the store of the unprivileged run verifies ({why})"
    kst = os.stat(key)
    assert kst.st_uid == 0 and stat.S_IMODE(kst.st_mode) == 0o600, \
        f"the private key stays root's with mode 0600 (uid {kst.st_uid}, mode {stat.S_IMODE(kst.st_mode):o})"
    segments = [f for f in glob.glob(os.path.join(out, "*")) if os.path.isfile(f)]
    assert segments and all(os.stat(f).st_uid == user.pw_uid for f in segments), \
        f"writerd's segments belong to {user.pw_name} ({[(os.path.basename(f), os.stat(f).st_uid) for f in segments][:4]})"
    assert os.stat(out).st_uid == user.pw_uid, \
        "writer.dir, made by the supervisor, belongs to the user"

    root_out = os.path.join(tmp, "store-root")
    r = subprocess.run(run_args(root_out, "root"), capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0, f"the same run as root exits 0 ({r.stderr[-1000:]})"
    a, b = records(out), records(root_out)
    assert a == b and len(a) > 0, (f"the unprivileged run stored the same records as the run as "
                                   f"root ({len(a)} vs {len(b)})")


def test_unknown_user(tmp):
    r = subprocess.run(run_args(os.path.join(tmp, "nouser"), "nouser",
                                ["--set", "supervisor.user=no-such-user-flowseal"]),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 78, \
        f"an unknown supervisor.user is a config error, exit 78 ({r.returncode})"
    assert "supervisor.user" in r.stderr and "no-such-user-flowseal" in r.stderr and "no such user" in r.stderr, \
        f"the message names the key and the user: {r.stderr.strip()!r}"


def test_unwritable_output(tmp, user):
    out = os.path.join(tmp, "rootonly")
    os.mkdir(out, 0o700)
    r = subprocess.run(run_args(out, "rootonly", ["--set", f"supervisor.user={user.pw_name}"]),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 78, \
        f"a writer.dir the user cannot write is refused, exit 78 ({r.returncode})"
    assert "writer.dir" in r.stderr and out in r.stderr and user.pw_name in r.stderr, \
        f"the message names writer.dir, the directory and the user: {r.stderr.strip()!r}"
    assert not glob.glob(f"/dev/shm/flowseal.{instance('rootonly')}.*"), \
        "no shared memory was created"


def test_key_within_reach(tmp, user):
    # A key the user could swap (its directory is the user's) is refused before any stage
    # starts: with the user owning the directory it could replace the key, or plant a link
    # that root would write through when it makes a new one.
    out = os.path.join(tmp, "reach")
    keydir = os.path.join(tmp, "userkeys")
    os.mkdir(keydir, 0o700)
    os.chown(keydir, user.pw_uid, user.pw_gid)
    r = subprocess.run(run_args(out, "reach", ["--set", f"supervisor.user={user.pw_name}",
                                               "--set", f"seal.key_file={keydir}/k.key"]),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 78, \
        f"a signing key in a directory the user can write is refused, exit 78 ({r.returncode})"
    assert "seal.key_file" in r.stderr and keydir in r.stderr and user.pw_name in r.stderr, \
        f"the message names seal.key_file, the directory and the user: {r.stderr.strip()!r}"
    assert not os.path.exists(os.path.join(keydir, "k.key")), "no key was made there"
    assert not glob.glob(f"/dev/shm/flowseal.{instance('reach')}.*"), "no shared memory was created"
