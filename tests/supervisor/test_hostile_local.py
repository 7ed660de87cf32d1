"""What a local user or an ordinary mistake can do to flowseal, through the real binary.

Shared-memory objects are untrusted: a control block planted by another user is refused by
status, stop and restart (and its pid never signalled); a forged shard count is refused
before anything indexes by it; `flowseal cleanup` removes a dead instance's leftovers and
refuses a live one. Ordinary mistakes get sysexits codes, not 70. A BPF filter starting
with '!' survives --set. A pcapng time that cannot be carried is dropped with a warning and
counted. Stored files get writer.file_mode (0640, directories 0750).

Env: FLOWSEAL (binary), TEST_DATA (tests/data).
"""
import glob
import mmap
import os
import pwd
import shutil
import stat
import struct
import subprocess

import pytest

FLOWSEAL = os.environ["FLOWSEAL"]
DATA = os.environ["TEST_DATA"]
MAGIC = 0x314C544353574C46
VERSION = 7  # common/control_block.h kLayoutVersion
BLOCK_BYTES = 128 + 13 * 256  # kMaxShards 8: capture, 8 flowd, dedupd, signerd, writerd, shipd


def flowseal(*args, timeout=120, **kw):
    return subprocess.run([FLOWSEAL, *args], capture_output=True, text=True, timeout=timeout, **kw)


def instance(tag):
    return f"hl{os.getpid()}-{tag}"


def control_path(name):
    return f"/dev/shm/flowseal.{name}.control"


def block(shards, pid):
    b = bytearray(BLOCK_BYTES)
    struct.pack_into("<QIIi", b, 0, MAGIC, VERSION, shards, pid)
    for i in range(4 + min(shards, 8)):
        kind = 0 if i == 0 else 1 if i <= shards else 2 if i == shards + 1 else 3 if i == shards + 2 else 4
        struct.pack_into("<II", b, 128 + i * 256 + 8, kind, i - 1 if kind == 1 else 0)
    return bytes(b)


def plant(name, data, uid=None):
    path = control_path(name)
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    os.write(fd, data)
    if uid is not None:
        os.fchown(fd, uid, uid)
    os.close(fd)
    return path


@pytest.fixture
def names():
    made = []
    yield made
    for name in made:
        for path in glob.glob(f"/dev/shm/flowseal.{name}.*"):
            os.unlink(path)


@pytest.fixture
def other_user():
    if os.geteuid() != 0:
        pytest.skip("needs root to plant an object owned by another user")
    name = f"fsh{os.getpid() % 1000000}"
    made = subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                           "/usr/sbin/nologin", name], capture_output=True).returncode == 0
    yield pwd.getpwnam(name if made else "nobody")
    if made:
        subprocess.run(["userdel", name], capture_output=True)


@pytest.fixture
def victim():
    p = subprocess.Popen(["sleep", "300"])
    yield p
    p.kill()
    p.wait()


def test_nothing_running_is_69():
    for cmd in (["status"], ["stop"], ["restart", "flowd"]):
        r = flowseal(*cmd, "--instance", instance("none"))
        assert r.returncode == 69, (cmd, r.stderr)
        assert "no flowseal instance" in r.stderr


def test_planted_block_of_another_user_is_refused(names, other_user, victim):
    name = instance("planted")
    names.append(name)
    plant(name, block(1, victim.pid), uid=other_user.pw_uid)
    for cmd in (["status"], ["status", "--json"], ["stop", "--timeout", "2"], ["restart", "flowd"]):
        r = flowseal(*cmd, "--instance", name)
        assert r.returncode == 77, (cmd, r.returncode, r.stderr)
        assert f"belongs to user {other_user.pw_name}" in r.stderr, r.stderr
        assert "not trusted" in r.stderr
    assert victim.poll() is None, "the pid named in the planted block was signalled"
    # ... and a squatted name blocks run with a message that names the owner.
    r = flowseal("run", "-r", os.path.join(DATA, "sample.pcap"), "-o", f"/tmp/{name}-out",
                 "--set", f"supervisor.instance={name}", "--budget", "16")
    shutil.rmtree(f"/tmp/{name}-out", ignore_errors=True)
    assert r.returncode == 73, r.stderr
    assert other_user.pw_name in r.stderr and "flowseal cleanup" in r.stderr


def test_own_block_naming_another_process_is_not_signalled(names, victim):
    name = instance("ownforged")
    names.append(name)
    plant(name, block(1, victim.pid))
    r = flowseal("stop", "--instance", name, "--timeout", "2")
    assert r.returncode == 77, r.stderr
    assert "will not signal" in r.stderr and "not a flowseal supervisor" in r.stderr
    assert victim.poll() is None


@pytest.mark.parametrize("shards", [0, 9, 200, 0xFFFFFFFF])
def test_forged_shard_count_is_refused_without_reading_past_the_block(names, shards):
    name = instance(f"shards{shards}")
    names.append(name)
    plant(name, block(shards, os.getpid()))
    for cmd in (["status"], ["restart", "flowd"], ["stop", "--timeout", "1"]):
        r = flowseal(*cmd, "--instance", name)
        assert r.returncode == 65, (cmd, r.returncode, r.stderr)
        assert f"{shards} flowd shards" in r.stderr and "forged" in r.stderr


def test_short_or_open_object_is_refused(names):
    name = instance("short")
    names.append(name)
    plant(name, block(1, os.getpid())[:200])
    r = flowseal("status", "--instance", name)
    assert r.returncode == 77 and f"not the {BLOCK_BYTES} of a control block" in r.stderr, r.stderr


def test_cleanup_removes_a_dead_instance_and_refuses_a_live_one(names, tmp_path):
    name = instance("dead")
    names.append(name)
    plant(name, block(1, 0x3FFFFFF0))
    ring = f"/dev/shm/flowseal.{name}.ring.capture-flowd0"
    with open(ring, "wb") as f:
        f.write(b"\0" * 4096)
    run_dir = f"/tmp/flowseal.{name}.Ab12Cd"
    os.mkdir(run_dir)
    open(os.path.join(run_dir, "config.yaml"), "w").close()
    # Alive while a process maps its control block: nothing removed.
    holder = subprocess.Popen(["python3", "-c", f"""
import mmap, sys
f = open({control_path(name)!r}, 'r+b'); m = mmap.mmap(f.fileno(), 0)
print('mapped', flush=True); sys.stdin.read()
"""], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "mapped"
        r = flowseal("cleanup", "--instance", name)
        assert r.returncode == 75, r.stderr
        assert str(holder.pid) in r.stderr and os.path.exists(control_path(name))
    finally:
        holder.stdin.close()
        holder.wait()
    r = flowseal("cleanup", "--instance", name)
    assert r.returncode == 0, r.stderr
    assert not os.path.exists(control_path(name)) and not os.path.exists(ring)
    assert not os.path.exists(run_dir)
    assert control_path(name) in r.stdout and run_dir in r.stdout
    r = flowseal("cleanup", "--instance", name)
    assert r.returncode == 0 and "nothing to clean up" in r.stdout


def test_a_run_removes_only_the_run_directories_of_supervisors_that_are_gone(names, tmp_path):
    """A SIGKILLed supervisor leaves its run directory (named with its pid); the next run of
    the instance removes it, but never one whose supervisor still lives, nor one of the older
    name, which says nothing about whose it is."""
    name = instance("rundirs")
    names.append(name)
    gone = subprocess.Popen(["true"])
    gone.wait()  # its pid is now free (a reuse within the test would only keep its directory)
    dead_dir = f"/tmp/flowseal.{name}.{gone.pid}.Ab12Cd"
    live_dir = f"/tmp/flowseal.{name}.{os.getpid()}.Ef34Gh"
    old_dir = f"/tmp/flowseal.{name}.Ij56Kl"
    try:
        for d in (dead_dir, live_dir, old_dir):
            os.mkdir(d)
            open(os.path.join(d, "config.yaml"), "w").close()
        r = flowseal("run", "-r", os.path.join(DATA, "sample.pcap"), "-o", str(tmp_path / "out"),
                     "--set", f"supervisor.instance={name}", "--set",
                     "supervisor.stats_interval_s=0")
        assert r.returncode == 0, r.stderr[-2000:]
        assert not os.path.exists(dead_dir), r.stderr[-2000:]
        assert f"removed {dead_dir}, left by a supervisor that is gone" in r.stderr
        assert os.path.exists(live_dir) and os.path.exists(old_dir)
    finally:
        for d in (dead_dir, live_dir, old_dir):
            shutil.rmtree(d, ignore_errors=True)


def test_output_mistakes_are_sysexits(tmp_path):
    capture = os.path.join(DATA, "sample.pcap")
    afile = tmp_path / "a-file"
    afile.write_text("x")
    dangling = tmp_path / "dangling"
    os.symlink(tmp_path / "nowhere", dangling)
    for out, what in ((afile, "not a directory"), (dangling, "does not exist")):
        r = flowseal("run", "-r", capture, "-o", str(out), "--set",
                     f"supervisor.instance={instance('out')}", "--budget", "16")
        assert r.returncode == 73, (out, r.stderr)
        assert what in r.stderr and "filesystem error" not in r.stderr
    r = flowseal("keygen", "-o", str(tmp_path / "missing" / "k.key"))
    assert r.returncode == 73 and "no such directory" in r.stderr, r.stderr


def test_bpf_filter_starting_with_bang_survives_set():
    for value in ("!tcp", "# x", "%y"):
        r = flowseal("config", "check", "--set", f"capture.filter={value}")
        assert r.returncode == 0, r.stderr
        assert f'filter: "{value}"' in r.stdout


def pcapng_with_times(offset_s):
    def block(kind, body):
        body += b"\0" * (-len(body) % 4)
        n = 12 + len(body)
        return struct.pack("<II", kind, n) + body + struct.pack("<I", n)
    shb = block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    opts = struct.pack("<HHB3x", 9, 1, 6) + struct.pack("<HHq", 14, 8, offset_s) + b"\0" * 4
    idb = block(1, struct.pack("<HHI", 1, 0, 65535) + opts)
    with open(os.path.join(DATA, "sample.pcap"), "rb") as f:
        f.read(24)
        _, _, caplen, wire = struct.unpack("<IIII", f.read(16))
        pkt = f.read(caplen)
    good = block(6, struct.pack("<IIIII", 0, 0, 1_000_000, caplen, wire) + pkt)
    units = (1 << 64) - 1
    bad = block(6, struct.pack("<IIIII", 0, units >> 32, units & 0xFFFFFFFF, caplen, wire) + pkt)
    return shb + idb + good + bad


def test_pcapng_time_out_of_range_is_dropped_counted_and_named(tmp_path):
    path = tmp_path / "times.pcapng"
    path.write_bytes(pcapng_with_times(1_600_000_000))
    out = tmp_path / "out"
    r = flowseal("run", "-r", str(path), "-o", str(out), "--set",
                 f"supervisor.instance={instance('times')}", "--budget", "16")
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"{path}: record 2 at offset" in r.stderr and "record dropped" in r.stderr
    assert "time out of range 1" in r.stderr
    seg = glob.glob(str(out / "*.fsg"))
    assert seg and all(stat.S_IMODE(os.stat(s).st_mode) == 0o640 for s in seg)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o750
    v = flowseal("verify", str(out))
    assert v.returncode == 0, v.stdout + v.stderr
