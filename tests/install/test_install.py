"""`meson install` into a temporary DESTDIR gives a working probe: `flowseal` in bin, the stage
programs in libexec/flowseal (started from there by the installed supervisor), the man pages
flowseal(1) and flowseal.yaml(5) naming every command and every config key, the systemd unit
pointing at the installed binary, and --version on every program.

meson passes the build directory (FLOWSEAL_BUILD_ROOT) besides conftest's variables."""
import json
import os
import re
import shutil
import subprocess

import pytest

STAGES = ["capture", "flowd", "dedupd", "signerd", "writerd", "shipd"]


def sh(args, timeout=300, **kw):
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture(scope="module")
def build_root():
    return os.environ["FLOWSEAL_BUILD_ROOT"]


@pytest.fixture(scope="module")
def layout(build_root):
    """Where meson puts each kind of file, from the build's own options."""
    options = json.loads(sh(["meson", "introspect", "--buildoptions", build_root]).stdout)
    o = {x["name"]: x["value"] for x in options}
    prefix = o["prefix"]

    def under(d):
        return d if os.path.isabs(d) else os.path.join(prefix, d)
    return {"prefix": prefix, "bindir": under(o["bindir"]),
            "libexecdir": os.path.join(under(o["libexecdir"]), "flowseal"),
            "mandir": under(o["mandir"]), "sysconfdir": under(o["sysconfdir"])}


@pytest.fixture(scope="module")
def destdir(build_root, module_tmp):
    dest = os.path.join(module_tmp, "dest")
    r = sh(["meson", "install", "-C", build_root, "--no-rebuild", "--quiet", "--destdir", dest])
    assert r.returncode == 0, f"meson install failed: {r.stdout[-2000:]} {r.stderr[-2000:]}"
    return dest


def installed(destdir, path):
    return os.path.join(destdir, path.lstrip("/"))


@pytest.fixture(scope="module")
def installed_flowseal(destdir, layout):
    return installed(destdir, os.path.join(layout["bindir"], "flowseal"))


def project_version(build_root):
    info = json.loads(sh(["meson", "introspect", "--projectinfo", build_root]).stdout)
    return info["version"]


def test_binaries_go_to_bin_and_libexec(destdir, layout):
    assert os.access(installed(destdir, os.path.join(layout["bindir"], "flowseal")), os.X_OK)
    for stage in STAGES:
        name = f"flowseal-{stage}"
        assert os.access(installed(destdir, os.path.join(layout["libexecdir"], name)), os.X_OK), \
            f"{name} is not in {layout['libexecdir']}"
        assert not os.path.exists(installed(destdir, os.path.join(layout["bindir"], name))), \
            f"{name} is a stage program, not a command: it must not be in {layout['bindir']}"


def test_installed_probe_runs_and_verifies(installed_flowseal, data_dir, module_tmp, instance):
    out = os.path.join(module_tmp, "out")
    r = sh([installed_flowseal, "run", "-r", os.path.join(data_dir, "sample.pcap"), "-o", out,
            "--instance", instance("install")])
    assert r.returncode == 0, f"installed flowseal run failed: {r.stderr[-3000:]}"
    assert "flowseal run summary" in r.stderr + r.stdout
    v = sh([installed_flowseal, "verify", out])
    assert v.returncode == 0, v.stdout + v.stderr
    c = sh([installed_flowseal, "cat", out])
    assert c.returncode == 0 and c.stdout.count("\n") > 0


def test_every_program_prints_the_version(installed_flowseal, destdir, layout, build_root):
    version = project_version(build_root)
    r = sh([installed_flowseal, "--version"])
    assert r.returncode == 0 and version in r.stdout, r.stdout + r.stderr
    for sub in commands(installed_flowseal):
        r = sh([installed_flowseal, *sub.split(), "--version"])
        assert r.returncode == 0 and version in r.stdout, f"flowseal {sub} --version: {r.stdout}"
    for stage in STAGES:
        exe = installed(destdir, os.path.join(layout["libexecdir"], f"flowseal-{stage}"))
        r = sh([exe, "--version"])
        assert r.returncode == 0 and r.stdout.strip() == f"flowseal-{stage} {version}", r.stdout


def commands(flowseal):
    """The subcommands `flowseal --help` lists ("config check" for nested ones)."""
    def listed(args):
        text = sh([flowseal, *args, "--help"]).stdout
        if "Subcommands:" not in text:
            return []
        block = text.split("Subcommands:", 1)[1]
        return re.findall(r"^  (\S+)\s", block, re.M)
    names = []
    for name in listed([]):
        nested = listed([name])
        names += [f"{name} {n}" for n in nested] if nested else [name]
    return names


def render(path):
    r = sh(["man", "-l", "-P", "cat", path], env={**os.environ, "MANWIDTH": "200"})
    assert r.returncode == 0, r.stderr
    assert "warning" not in r.stderr.lower(), r.stderr
    return re.sub(r".\x08", "", r.stdout)


def test_man_page_names_every_command(installed_flowseal, destdir, layout):
    page = installed(destdir, os.path.join(layout["mandir"], "man1", "flowseal.1"))
    text = render(page)
    found = commands(installed_flowseal)
    assert len(found) >= 10, found
    missing = [c for c in found if c not in text]
    assert not missing, f"flowseal(1) does not describe: {missing}"


def test_man_page_names_every_config_key(installed_flowseal, destdir, layout):
    page = installed(destdir, os.path.join(layout["mandir"], "man5", "flowseal.yaml.5"))
    text = render(page)
    dump = sh([installed_flowseal, "config", "check"]).stdout
    keys, section = [], None
    for line in dump.splitlines():
        if not line.startswith(" "):
            section = line.rstrip(":")
        else:
            keys.append(f"{section}.{line.split(':', 1)[0].strip()}")
    assert len(keys) > 40, keys
    missing = [k for k in keys if k not in text]
    assert not missing, f"flowseal.yaml(5) does not describe: {missing}"


def test_systemd_unit_starts_the_installed_binary(destdir, layout):
    unit = installed(destdir, os.path.join(layout["prefix"], "lib/systemd/system/flowseal.service"))
    text = open(unit).read()
    exec_start = re.search(r"^ExecStart=(\S+) run -c (\S+)$", text, re.M)
    assert exec_start, text
    assert exec_start.group(1) == os.path.join(layout["bindir"], "flowseal")
    assert exec_start.group(2) == os.path.join(layout["sysconfdir"], "flowseal", "flowseal.yaml")
    assert "@" not in text, "an unreplaced @VARIABLE@ in the unit"
    # An error a restart cannot mend (a damaged store: 65, bad config: 78, usage, permission)
    # ends the unit rather than restart-looping it; transient ones (69, 70, 73-75) restart.
    prevent = re.search(r"^RestartPreventExitStatus=(.*)$", text, re.M)
    assert prevent, "the unit restarts on every failure, also on a damaged store or bad config"
    assert sorted(int(code) for code in prevent.group(1).split()) == [64, 65, 77, 78]
    assert re.search(r"^Restart=on-failure$", text, re.M)
    if shutil.which("systemd-analyze"):
        # Checks the unit's syntax; the binary path is the one it will have once installed.
        r = sh(["systemd-analyze", "verify", "--man=no", unit])
        assert "Unknown" not in r.stderr and "Invalid" not in r.stderr, r.stderr
