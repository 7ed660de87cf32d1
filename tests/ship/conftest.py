import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import shiplib  # noqa: E402


@pytest.fixture
def pki(tmp_path):
    return shiplib.Pki(str(tmp_path / "pki"))


@pytest.fixture
def server(tmp_path, pki):
    s = shiplib.NatsServer(str(tmp_path / "nats"), pki)
    os.makedirs(s.dir, exist_ok=True)
    s.start()
    yield s
    s.kill()


@pytest.fixture
def client(pki):
    """A client certificate of the server's CA: (cert, key)."""
    return pki.issue("probe")
