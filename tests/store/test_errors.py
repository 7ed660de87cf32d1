"""Ordinary mistakes with the store commands get one line naming the path and a sysexits
code (66 input missing or unreadable, 64 usage), never a raw `filesystem error:` line or
exit 70."""
import os
import shutil
import subprocess

import pytest

FLOWSEAL = os.environ["FLOWSEAL"]
DATA = os.environ["FLOWSEAL_TEST_DATA"]
STORE = os.path.join(DATA, "store-format2")
TIMEOUT = 60


def run(args):
    return subprocess.run([FLOWSEAL] + args, capture_output=True, text=True, timeout=TIMEOUT)


def refused(args, code, *names):
    r = run(args)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == code, (r.returncode, r.stderr)
    assert len(lines) == 1, r.stderr
    assert "filesystem error" not in r.stderr
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def store(tmp_path):
    d = str(tmp_path / "store")
    shutil.copytree(STORE, d)
    return d


def test_verify_with_a_missing_pubkey_file_exits_66_naming_it(tmp_path):
    missing = str(tmp_path / "nope.pub")
    line = refused(["verify", STORE, "--pubkey", missing], 66, missing)
    assert line.startswith("verify: --pubkey")


def test_verify_with_a_garbage_pubkey_file_exits_66_naming_it(tmp_path):
    garbage = tmp_path / "garbage.pub"
    garbage.write_text("not a key\n")
    refused(["verify", STORE, "--pubkey", str(garbage)], 66, str(garbage), "not a PEM public key")


def test_verify_with_a_directory_of_no_keys_as_pubkey_exits_66(tmp_path):
    # A directory pins each *.pub in it (a store that rotated keys); one with none is refused.
    refused(["verify", STORE, "--pubkey", str(tmp_path)], 66, str(tmp_path),
            "a directory holding no *.pub file")


def test_verify_of_an_empty_directory_exits_66_naming_it(tmp_path):
    empty = str(tmp_path / "empty")
    os.mkdir(empty)
    refused(["verify", empty], 66, empty, "not a flowseal store")


def test_verify_of_a_missing_directory_exits_66_naming_it(tmp_path):
    missing = str(tmp_path / "missing")
    refused(["verify", missing], 66, missing, "no such directory")


def test_verify_of_a_segment_file_is_a_usage_error(store):
    seg = os.path.join(store, sorted(os.listdir(store))[-1])
    assert seg.endswith(".fsg")
    refused(["verify", seg], 64, seg, "give the store's directory")


def test_verify_of_a_store_without_keys_exits_66_naming_the_keys_directory(store):
    shutil.rmtree(os.path.join(store, "keys"))
    refused(["verify", store], 66, os.path.join(store, "keys"), "--pubkey")


def test_verify_proof_of_a_missing_store_exits_66(tmp_path):
    missing = str(tmp_path / "missing")
    refused(["verify", missing, "--proof", "C1:end:1"], 66, missing)


def test_cat_of_a_missing_directory_exits_66_naming_it(tmp_path):
    missing = str(tmp_path / "missing")
    refused(["cat", missing], 66, missing, "no such")


def test_cat_of_a_store_without_keys_exits_66_before_printing(store):
    shutil.rmtree(os.path.join(store, "keys"))
    r = run(["cat", store])
    assert r.returncode == 66 and r.stdout == ""
    assert os.path.join(store, "keys") in r.stderr and "--pubkey" in r.stderr
    assert run(["cat", store, "--no-verify"]).returncode == 0


def test_cat_with_a_bad_option_value_exits_64(tmp_path):
    refused(["cat", STORE, "--since", "yesterday"], 64, "--since yesterday")
    refused(["cat", STORE, "--format", "xml"], 64, "--format xml")


def test_verify_proof_of_a_missing_file_exits_66(tmp_path):
    missing = str(tmp_path / "proof.json")
    refused(["verify-proof", missing], 66, missing)


def test_verify_proof_of_a_malformed_proof_exits_65_naming_what_and_where(tmp_path):
    bad = tmp_path / "proof.json"
    bad.write_text('{\n  "event_id": "C1:end:1",\n  oops\n}\n')
    refused(["verify-proof", str(bad)], 65, str(bad), "not a proof", "line 3")
    bad.write_text('{"event_id": "C1:end:1"}')
    refused(["verify-proof", str(bad)], 65, str(bad), 'member "record" is missing')


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_verify_with_an_unreadable_pubkey_exits_66(tmp_path):
    key = tmp_path / "key.pub"
    shutil.copy(os.path.join(STORE, "keys", os.listdir(os.path.join(STORE, "keys"))[0]), key)
    os.chmod(key, 0)
    refused(["verify", STORE, "--pubkey", str(key)], 66, str(key))
