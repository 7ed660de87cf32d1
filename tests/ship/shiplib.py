"""Helpers for the shipping tests: certificates made with openssl, a nats-server with JetStream
and TLS client verification on a free loopback port (started and killed by PID), and the
flowseal binaries from the build (environment variables set by meson.build)."""
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time

FLOWSEAL = os.environ.get("FLOWSEAL", "flowseal")
SHIPD = os.environ.get("FLOWSEAL_SHIPD", "flowseal-shipd")
DATA = os.environ.get("FLOWSEAL_DATA", "tests/data")
NATS_SERVER = os.environ.get("NATS_SERVER", "nats-server")
TIMEOUT = 180


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


class Pki:
    """A CA with a server certificate (localhost, 127.0.0.1) and client certificates."""

    def __init__(self, directory, name="ca"):
        self.dir = directory
        self.name = name
        os.makedirs(directory, exist_ok=True)
        self.ca = os.path.join(directory, f"{name}.pem")
        self.ca_key = os.path.join(directory, f"{name}.key")
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", self.ca_key, "-out", self.ca, "-days", "2", "-subj", f"/CN={name}",
                cwd=directory)

    def issue(self, cn, server=False):
        key = os.path.join(self.dir, f"{self.name}-{cn}.key")
        csr = os.path.join(self.dir, f"{self.name}-{cn}.csr")
        cert = os.path.join(self.dir, f"{self.name}-{cn}.pem")
        ext = os.path.join(self.dir, f"{self.name}-{cn}.ext")
        with open(ext, "w") as f:
            if server:
                f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
            else:
                f.write("extendedKeyUsage=clientAuth\n")
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", key, "-out", csr, "-subj", f"/CN={cn}", cwd=self.dir)
        openssl("x509", "-req", "-in", csr, "-CA", self.ca, "-CAkey", self.ca_key,
                "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", ext, cwd=self.dir)
        os.chmod(key, 0o600)
        return cert, key


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NatsServer:
    """nats-server with JetStream (file store under `directory`) and, with a Pki, TLS that
    verifies client certificates. Same port and store across restart()."""

    def __init__(self, directory, pki=None, port=None, cluster=None):
        """cluster: (server name, cluster name, route port, [route ports of every node]) makes
        this node one of a JetStream cluster (routes in plaintext on loopback)."""
        self.dir = directory
        os.makedirs(directory, exist_ok=True)
        self.pki = pki
        self.port = port or free_port()
        self.proc = None
        self.conf = os.path.join(directory, "nats.conf")
        lines = [f"listen: 127.0.0.1:{self.port}",
                 f'jetstream {{ store_dir: "{os.path.join(directory, "js")}" }}']
        if cluster is not None:
            name, cluster_name, route_port, route_ports = cluster
            routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in route_ports)
            lines += [f"server_name: {name}",
                      f"cluster {{ name: {cluster_name}, listen: 127.0.0.1:{route_port}, "
                      f"routes: [ {routes} ] }}"]
        if pki is not None:
            cert, key = pki.issue("localhost", server=True)
            lines.append(f'tls {{ cert_file: "{cert}", key_file: "{key}", ca_file: "{pki.ca}", '
                         f"verify: true, timeout: 2 }}")
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.log = os.path.join(directory, "nats.log")

    @property
    def url(self):
        return f"{'tls' if self.pki else 'nats'}://localhost:{self.port}"

    def start(self):
        assert self.proc is None
        # Appended: every start's "Server is ready" line is counted.
        before = self.ready_lines()
        self.proc = subprocess.Popen([NATS_SERVER, "-c", self.conf, "-l", self.log],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while self.ready_lines() <= before:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited {self.proc.returncode}: {self.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"nats-server not ready: {self.tail()}")
            time.sleep(0.05)
        return self

    def ready_lines(self):
        try:
            with open(self.log) as f:
                return f.read().count("Server is ready")
        except FileNotFoundError:
            return 0

    def tail(self):
        try:
            with open(self.log) as f:
                return f.read()[-2000:]
        except FileNotFoundError:
            return ""

    def kill(self, sig=signal.SIGKILL):
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            self.proc.wait(timeout=30)
        self.proc = None

    def restart(self):
        self.kill()
        return self.start()


class SlowProxy:
    """A loopback TCP relay to a server port that passes at most `rate` bytes per second from
    client to server, so that a test can kill the server while a stream is surely in flight
    (unthrottled, the whole store is acked in a few milliseconds). TLS passes through
    untouched; a connection the server drops, or cannot accept, is dropped on the client."""

    def __init__(self, target_port, rate):
        self.target_port = target_port
        self.rate = rate
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.closed = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def url(self, scheme="tls"):
        return f"{scheme}://localhost:{self.port}"

    def _accept(self):
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._pump, args=(client, upstream, self.rate),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, None),
                             daemon=True).start()

    @staticmethod
    def _pump(src, dst, rate):
        chunk = 512 if rate else 65536
        try:
            while True:
                data = src.recv(chunk)
                if not data:
                    break
                dst.sendall(data)
                if rate:
                    time.sleep(len(data) / rate)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self):
        self.closed = True
        self.listener.close()


class NatsCluster:
    """Three (or `size`) JetStream nodes on loopback, one cluster, each with its own port,
    route port and store dir; every node's client port speaks mutual TLS with `pki`."""

    def __init__(self, directory, pki, size=3, name="flowseal-core"):
        route_ports = [free_port() for _ in range(size)]
        self.nodes = [NatsServer(os.path.join(directory, f"n{i + 1}"), pki,
                                 cluster=(f"n{i + 1}", name, route_ports[i], route_ports))
                      for i in range(size)]

    def start(self):
        for node in self.nodes:
            node.start()
        return self

    def node(self, name):
        return next(n for n in self.nodes if n.dir.endswith(os.sep + name))

    def kill(self):
        for node in self.nodes:
            node.kill()


class JsApi:
    """A few JetStream API requests ($JS.API.*) over a plain NATS connection with mutual TLS:
    what the `nats` CLI would do (Debian has no package of it). Replies are JSON; a reply
    with "error" raises JsApiError."""

    def __init__(self, port, pki, cert, key, timeout=10):
        import json
        import ssl
        self.json = json
        context = ssl.create_default_context(cafile=pki.ca)
        context.load_cert_chain(cert, key)
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        info = b""
        while not info.endswith(b"\r\n"):
            chunk = raw.recv(1)
            if not chunk:
                raise ConnectionError(f"port {port} closed before INFO")
            info += chunk
        self.sock = context.wrap_socket(raw, server_hostname="localhost")
        self.buf = b""
        self.sock.sendall(b'CONNECT {"verbose":false,"pedantic":false,"headers":false,'
                          b'"tls_required":true}\r\nSUB _INBOX.jsapi 1\r\n')
        self.sock.sendall(b"PING\r\n")
        while self._line() != b"PONG":
            pass

    def _line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"server closed: {self.buf!r}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        if line.startswith(b"-ERR"):
            raise ConnectionError(line.decode())
        if line == b"PING":
            self.sock.sendall(b"PONG\r\n")
            return self._line()
        return line

    def _payload(self, size):
        while len(self.buf) < size + 2:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed mid-message")
            self.buf += chunk
        data, self.buf = self.buf[:size], self.buf[size + 2:]
        return data

    def request(self, subject, body=None):
        data = b"" if body is None else self.json.dumps(body).encode()
        self.sock.sendall(f"PUB {subject} _INBOX.jsapi {len(data)}\r\n".encode() + data +
                          b"\r\n")
        while True:
            line = self._line()
            if line.startswith(b"MSG "):
                reply = self.json.loads(self._payload(int(line.split()[-1])))
                if "error" in reply:
                    raise JsApiError(subject, reply["error"])
                return reply

    def stream_create(self, config):
        return self.request(f"$JS.API.STREAM.CREATE.{config['name']}", config)

    def stream_update(self, config):
        return self.request(f"$JS.API.STREAM.UPDATE.{config['name']}", config)

    def stream_info(self, name):
        return self.request(f"$JS.API.STREAM.INFO.{name}")

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class JsApiError(Exception):
    def __init__(self, subject, error):
        super().__init__(f"{subject}: {error}")
        self.error = error


def tls_settings(pki, cert, key, url):
    return [f"ship.url={url}", f"ship.tls_ca={pki.ca}", f"ship.tls_cert={cert}",
            f"ship.tls_key={key}"]


def run_probe(pcaps, out, instance, extra=()):
    args = [FLOWSEAL, "run", "-o", out, "--instance", instance,
            "--set", "supervisor.stats_interval_s=0"]
    for p in pcaps:
        args += ["-r", p]
    args += list(extra)
    r = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def shipd_args(store, settings):
    args = [SHIPD, "--set", f"writer.dir={store}"]
    for s in settings:
        args += ["--set", s]
    return args


def ship(store, settings, until_shipped=True, timeout=TIMEOUT):
    args = shipd_args(store, settings) + (["--until-shipped"] if until_shipped else [])
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout)


def collect_args(server, pki, cert, key, out, extra=()):
    args = [FLOWSEAL, "collect", "--url", server.url, "-o", out]
    if pki is not None:
        args += ["--tls-ca", pki.ca, "--tls-cert", cert, "--tls-key", key]
    return args + list(extra)


def collect(server, pki, cert, key, out, extra=(), idle=3, timeout=TIMEOUT):
    args = collect_args(server, pki, cert, key, out, ["--idle-exit", str(idle), "--json", *extra])
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout)


def flowseal(*args, timeout=TIMEOUT):
    return subprocess.run([FLOWSEAL, *args], capture_output=True, text=True, timeout=timeout)


def key_id(store):
    """The probe's key id (hex): the one folder name collect makes for it."""
    keys = [f for f in os.listdir(os.path.join(store, "keys")) if f.endswith(".pub")]
    assert keys, f"no public key in {store}/keys"
    r = subprocess.run(["openssl", "pkey", "-pubin", "-in", os.path.join(store, "keys", keys[0]),
                        "-outform", "DER"], capture_output=True, check=True)
    import hashlib
    return hashlib.sha256(r.stdout).hexdigest()


def collected_stores(out):
    """Every DIR/<key id>/<stream id> collect wrote."""
    stores = []
    for k in sorted(os.listdir(out)):
        for s in sorted(os.listdir(os.path.join(out, k))):
            stores.append(os.path.join(out, k, s))
    return stores


def events(store):
    r = flowseal("cat", "--events", store)
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()
