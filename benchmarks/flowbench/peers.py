"""Other flow exporters (softflowd, nfpcapd, argus, pmacctd) over the same capture."""
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time

from .common import sh


def run_peer(name, pcap, total_packets, timeout=1800):
    """(seconds, flow count or None, peak RSS MiB, note) for one peer tool, or None."""
    work = tempfile.mkdtemp(prefix=f"peer-{name}-")
    try:
        if name == "softflowd" and shutil.which("softflowd"):
            # softflowd 1.1 -r may sit without reading until its control socket is asked for
            # statistics, and may wait for `shutdown` after the end of the file: so poll
            # `softflowctl statistics` until it has seen every packet (processed + ignored),
            # or it exits by itself, then ask it to shut down. -m: room for every flow (the
            # default 8192 would force-expire flows, unlike the other tools).
            ctl = os.path.join(work, "ctl")
            sf_log = open(os.path.join(work, "log"), "w+")  # a file: a full pipe would block it
            t0 = time.monotonic()
            p = subprocess.Popen(["softflowd", "-r", pcap, "-n", "127.0.0.1:9", "-d", "-c", ctl,
                                  "-m", "4000000", "-t", "maxlife=1800", "-t", "udp=60",
                                  "-t", "tcp=300", "-t", "icmp=60", "-t", "general=60"],
                                 stdout=sf_log, stderr=subprocess.STDOUT, text=True)
            seen = lambda text: sum(int(x) for x in re.findall(
                r"(?:Packets processed|Ignored packets):\s*(\d+)", text))
            while time.monotonic() - t0 < timeout and p.poll() is None:
                if os.path.exists(ctl):
                    st = sh(["softflowctl", "-c", ctl, "statistics"])
                    if st.returncode == 0 and seen(st.stdout) >= total_packets:
                        break
                time.sleep(0.02)
            seconds = time.monotonic() - t0
            rss = peak_rss_mib(p.pid)
            if p.poll() is None:
                sh(["softflowctl", "-c", ctl, "shutdown"])
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            sf_log.seek(0)
            text = sf_log.read()
            sf_log.close()
            m = re.search(r"Flows exported:\s*(\d+)", text)
            note = f"{seen(text):,} packets seen" if seen(text) != total_packets else ""
            return seconds, int(m.group(1)) if m else None, rss, note
        if name == "nfpcapd" and shutil.which("nfpcapd"):
            return timed_peer(["nfpcapd", "-r", pcap, "-l", work, "-e", "1800,60"], timeout,
                              lambda: nfdump_flows(work))
        if name == "argus" and shutil.which("argus"):
            out = os.path.join(work, "a.argus")
            return timed_peer(["argus", "-X", "-r", pcap, "-w", out], timeout,
                              lambda: len(sh(["ra", "-n", "-r", out]).stdout.splitlines())
                              if shutil.which("ra") and os.path.exists(out) else None)
        if name == "pmacctd" and shutil.which("pmacctd"):
            conf = os.path.join(work, "p.conf")
            with open(conf, "w") as f:
                f.write(f"pcap_savefile: {pcap}\naggregate: src_host,dst_host,src_port,dst_port,proto\n"
                        f"plugins: print\nprint_output_file: {work}/out.txt\nprint_output: csv\n"
                        "print_refresh_time: 3600\n")
            res = timed_peer(["pmacctd", "-f", conf], timeout,
                             lambda: max(0, len(open(f"{work}/out.txt").read().splitlines()) - 1)
                             if os.path.exists(f"{work}/out.txt") else None)
            # pmacctd sleeps 2 s at the end of a savefile before it exits.
            return (max(0.0, res[0] - 2.0),) + res[1:3] + (res[3] + " (2 s end-of-file sleep subtracted)",)
        return None
    except subprocess.TimeoutExpired:
        return None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def peak_rss_mib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            m = re.search(r"VmHWM:\s+(\d+) kB", f.read())
        return int(m.group(1)) / 1024 if m else None
    except OSError:
        return None


def timed_peer(cmd, timeout, count):
    # Output goes to a file, not a pipe: a tool that logs a lot would block on a full pipe.
    with tempfile.TemporaryFile("w+") as err:
        t0 = time.monotonic()
        p = subprocess.Popen(cmd, stdout=err, stderr=err, text=True)
        timer = threading.Timer(timeout, p.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(p.pid, 0)
        finally:
            timer.cancel()
        seconds = time.monotonic() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        tail = err.read()[-200:].strip().replace("\n", " ")
    note = "" if p.returncode == 0 else f"exit {p.returncode}: {tail}"
    return seconds, count(), usage.ru_maxrss / 1024, note


def nfdump_flows(work):
    if not shutil.which("nfdump"):
        return None
    d = sh(["nfdump", "-R", work, "-q", "-o", "csv"])
    return sum(1 for line in d.stdout.splitlines() if line and line[0].isdigit())


PEER_PACKAGES = {"softflowd": "softflowd", "nfpcapd": "nfdump", "argus": "argus-server",
                 "pmacctd": "pmacct"}
PEER_EXTRA_PACKAGES = ["argus-client"]
