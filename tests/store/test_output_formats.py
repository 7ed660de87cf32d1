"""What `cat` prints is what Zeek's tools and a JSON schema expect (issue 16, part 4).

One store from every capture of tests/data (TCP, UDP, ICMP, IPv6, VLAN, MPLS, PPPoE, pcapng)
and Zeek's tunnel traces of tests/zeek/data (Geneve, GTP-U, AYIYA, GRE), with net.local_nets set so that local_orig/local_resp appear:
- every JSON line of `cat` and `cat --events` validates against docs/conn.schema.json (no
  property the schema does not name, every value of its type, addresses as addresses);
- `bro-cut` (Debian's bro-aux, Zeek's own column cutter) reads the TSV by its #fields header
  and gives, for every flow, the values of the JSON lines.

Environment: FLOWSEAL (the flowseal binary), FLOWSEAL_TEST_DATA (tests/data).
"""
import glob
import json
import os
import shutil
import subprocess

import jsonschema
import pytest

FLOWSEAL = os.environ["FLOWSEAL"]
DATA = os.environ["FLOWSEAL_TEST_DATA"]
SCHEMA = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "conn.schema.json")
TIMEOUT = 600


def run(args, **kw):
    return subprocess.run([FLOWSEAL] + args, capture_output=True, text=True, timeout=TIMEOUT,
                          **kw)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("formats") / "store")
    captures = sorted(glob.glob(os.path.join(DATA, "*.pcap")) +
                      glob.glob(os.path.join(DATA, "*.pcapng")))
    tunnels = sorted(glob.glob(os.path.join(DATA, "..", "zeek", "data", "core.tunnels.*",
                                            "*.pcap")))
    assert len(captures) >= 10 and len(tunnels) >= 5, (captures, tunnels)
    captures += tunnels
    args = ["run", "-o", out, "--instance", f"formats{os.getpid()}",
            "--set", "net.local_nets=[10.0.0.0/8, 192.168.0.0/16, 172.16.0.0/12, fe80::/10]"]
    for c in captures:
        args += ["-r", c]
    r = run(args)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def json_lines(store, *extra):
    r = run(["cat", store, *extra])
    assert r.returncode == 0, r.stderr[-2000:]
    return [json.loads(line) for line in r.stdout.splitlines()]


@pytest.mark.parametrize("extra", [[], ["--events"]], ids=["ends_and_summaries", "events"])
def test_every_cat_line_matches_the_schema(store, extra):
    with open(SCHEMA) as f:
        schema = json.load(f)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    rows = json_lines(store, *extra)
    assert len(rows) > 1000, len(rows)
    bad = []
    for n, row in enumerate(rows):
        for error in validator.iter_errors(row):
            bad.append(f"line {n + 1} ({row.get('uid')}): {'/'.join(map(str, error.path))}: "
                       f"{error.message}")
    assert not bad, f"{len(bad)} schema errors, e.g.\n" + "\n".join(bad[:10])
    # The store covers what the optional properties are for.
    assert any("local_orig" in r for r in rows), "net.local_nets gives local_orig"
    assert any(r["id.orig_h"].count(":") >= 2 for r in rows), "IPv6 flows"
    assert any(r["tunnel_parents"] for r in rows), "tunnelled flows"


def test_the_schema_refuses_what_it_does_not_name(store):
    """The schema is a check, not a formality: an unknown property, a port out of range or an
    address that is none are errors."""
    with open(SCHEMA) as f:
        schema = json.load(f)
    validator = jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    row = json_lines(store)[0]
    assert not list(validator.iter_errors(row))
    for change in ({"surprise": 1}, {"id.orig_p": 70000}, {"id.resp_h": "10.0.0.300"},
                   {"conn_state": "XX"}, {"uid": "not a uid"}):
        assert list(validator.iter_errors({**row, **change})), change


def test_bro_cut_reads_the_tsv(store):
    bro_cut = shutil.which("bro-cut")
    assert bro_cut, "bro-cut (Debian's bro-aux; ./setup installs it) is needed"
    fields = ["uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto",
              "conn_state", "history", "orig_pkts", "orig_ip_bytes", "resp_pkts",
              "resp_ip_bytes", "local_orig"]
    tsv = run(["cat", store, "--format", "tsv"])
    assert tsv.returncode == 0, tsv.stderr[-2000:]
    cut = subprocess.run([bro_cut] + fields, input=tsv.stdout, capture_output=True, text=True,
                         timeout=TIMEOUT)
    assert cut.returncode == 0, cut.stderr
    got = [line.split("\t") for line in cut.stdout.splitlines()]
    rows = json_lines(store)
    assert len(got) == len(rows) > 1000, (len(got), len(rows))

    def tsv_value(row, field):
        value = row.get(field)
        if value is None:
            return "-"  # unset, as Zeek's #unset_field
        if isinstance(value, bool):
            return "T" if value else "F"
        if value == "":
            return "(empty)"
        return str(value)
    want = [[tsv_value(r, f) for f in fields] for r in rows]
    differ = [(g, w) for g, w in zip(got, want) if g != w]
    assert not differ, f"{len(differ)} rows differ, e.g. {differ[:3]}"
    # bro-cut -d turns ts into a date: ts is the time Zeek's tools take it for.
    dated = subprocess.run([bro_cut, "-u", "-d", "ts"], input=tsv.stdout, capture_output=True,
                           text=True, timeout=TIMEOUT)
    assert dated.returncode == 0, dated.stderr
    first = dated.stdout.splitlines()[0]
    assert first[:4].isdigit() and "T" in first, first
