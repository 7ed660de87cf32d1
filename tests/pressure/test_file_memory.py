"""Bounded file-backed memory while reading a large capture (issue 12, target 7).

Run by meson: python3 -m pytest -q tests/pressure/test_file_memory.py (see tests/conftest.py).

A capture of more than 200 MiB is made in the test's temp dir by repeating sample.pcap's
packets (each copy moved on in time), and `flowseal run` reads it with the default config.
While it runs, the test samples the capture process: its file-backed PSS (Pss_File of
/proc/PID/smaps_rollup) and how far it has read the file (the offset of its descriptor for
that file in /proc/PID/fdinfo, which capture keeps at the position it has released up to).
Checked: every sample's file-backed PSS is at most 32 MiB, and the samples cover the read
(one at least halfway through the file), so a reader that kept the pages it passed, whose
PSS grows with the bytes read, fails. The samples are taken for as long as capture has the
file open (an event, not a time limit); the run must exit 0 with every packet counted.
"""
import os
import re
import struct
import subprocess
import time

import pytest

FILE_BYTES = 210 << 20
LIMIT_KB = 32 * 1024
TIMEOUT = 600


def read_pcap(path):
    """(header, [(ts_sec, ts_usec, caplen, wire_len, data)]) of a little-endian us pcap."""
    with open(path, "rb") as f:
        blob = f.read()
    assert struct.unpack_from("<I", blob, 0)[0] == 0xA1B2C3D4
    records, at = [], 24
    while at + 16 <= len(blob):
        sec, usec, caplen, wire = struct.unpack_from("<IIII", blob, at)
        records.append((sec, usec, caplen, wire, blob[at + 16:at + 16 + caplen]))
        at += 16 + caplen
    return blob[:24], records


def write_big(path, sample):
    """Copies of `sample`'s packets, each copy 1 s after the last one ended; returns packets."""
    header, records = read_pcap(sample)
    first = records[0][0]
    span = records[-1][0] - first + 1
    written, packets, copy = len(header), 0, 0
    with open(path, "wb") as out:
        out.write(header)
        while written < FILE_BYTES:
            shift = copy * (span + 1)
            chunk = bytearray()
            for sec, usec, caplen, wire, data in records:
                chunk += struct.pack("<IIII", sec + shift, usec, caplen, wire)
                chunk += data
            out.write(chunk)
            written += len(chunk)
            packets += len(records)
            copy += 1
    return packets


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def pss_file_kb(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            m = re.search(r"^Pss_File:\s+(\d+) kB", f.read(), re.M)
        return int(m.group(1)) if m else None
    except OSError:
        return None


def file_offset(pid, path):
    """Offset of `pid`'s descriptor open on `path`, or None when it has none."""
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == path:
                    with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                        return int(re.search(r"^pos:\s+(\d+)", f.read(), re.M).group(1))
            except (OSError, AttributeError):
                continue
    except OSError:
        pass
    return None


def test_reading_a_large_capture_keeps_file_backed_pss_bounded(flowseal, data_dir, module_tmp,
                                                               instance, sanitized):
    big = os.path.join(module_tmp, "big.pcap")
    packets = write_big(big, os.path.join(data_dir, "sample.pcap"))
    size = os.path.getsize(big)
    assert size >= 200 << 20
    out = os.path.join(module_tmp, "store")
    run = subprocess.Popen([flowseal, "run", "-r", big, "-o", out,
                            "--set", f"supervisor.instance={instance('filemem')}",
                            "--set", "supervisor.stats_interval_s=0"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    samples = []  # (offset, Pss_File kB) while capture has the file open
    capture = None
    deadline = time.monotonic() + TIMEOUT
    try:
        while run.poll() is None and time.monotonic() < deadline:
            if capture is None or not os.path.exists(f"/proc/{capture}"):
                found = [c for c in children(run.pid) if comm(c).startswith("flowseal-captur")]
                capture = found[0] if found else None
            if capture is not None:
                offset = file_offset(capture, big)
                kb = pss_file_kb(capture)
                # The offset is read before and after: a sample counts only if the file was
                # open the whole time the PSS was read.
                if offset is not None and kb is not None and file_offset(capture, big) is not None:
                    samples.append((offset, kb))
            time.sleep(0.002)
        stdout, stderr = run.communicate(timeout=max(1, deadline - time.monotonic()))
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        os.remove(big)  # pytest keeps its last temp dirs: do not leave 210 MiB behind
    assert run.returncode == 0, stderr[-2000:]
    assert re.search(rf"\b{packets}\b", stdout + stderr), \
        f"the run counts all {packets} packets: {(stdout + stderr)[-1500:]}"
    assert samples, "capture was sampled while it had the file open"
    furthest = max(o for o, _ in samples)
    peak = max(kb for _, kb in samples)
    print(f"{len(samples)} samples, furthest offset {furthest >> 20} of {size >> 20} MiB, "
          f"largest Pss_File {peak} kB")
    assert furthest >= size // 2, \
        f"a sample was taken at least halfway through the file (furthest {furthest} of {size})"
    # Under ASan the binary's own mapped text is larger; the input file's share still must not
    # grow with it, so there the bound is on the growth over the first sample.
    base = samples[0][1] if sanitized else 0
    assert peak - base <= LIMIT_KB, \
        f"file-backed PSS stayed within 32 MiB while reading: peak {peak} kB, samples " \
        f"{samples[::max(1, len(samples) // 20)]}"
