"""`flowseal` in the background with its output collected line by line, so that a test waits
for a log line (an event) rather than for a time. Shared by the supervisor tests."""
import os
import re
import signal
import subprocess
import threading
import time


class LoggedRun:
    def __init__(self, command, timeout):
        self.timeout = timeout
        self.lines = []
        self.cond = threading.Condition()
        self.p = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            with self.cond:
                self.lines.append(line)
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def text(self):
        with self.cond:
            return "".join(self.lines)

    def search(self, pattern, seconds=None):
        """The first match of the regex `pattern` in the output, waiting until it comes, the
        process ends or `seconds` (default: the run's timeout) pass; None then."""
        deadline = time.time() + (self.timeout if seconds is None else seconds)
        regex = re.compile(pattern)
        with self.cond:
            while True:
                for line in self.lines:
                    m = regex.search(line)
                    if m:
                        return m
                if self.p.poll() is not None or time.time() > deadline:
                    # The reader may still hold the last lines of an ended process.
                    for line in self.lines:
                        m = regex.search(line)
                        if m:
                            return m
                    return None
                self.cond.wait(0.5)

    def stop(self):
        """SIGTERM, then SIGKILL if it does not end within the timeout."""
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        try:
            self.p.wait(self.timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()


def remove_instance_shm(name):
    """What an instance left in /dev/shm (a test's own instance name only)."""
    for leftover in os.listdir("/dev/shm"):
        if leftover.startswith(f"flowseal.{name}."):
            os.remove(os.path.join("/dev/shm", leftover))
