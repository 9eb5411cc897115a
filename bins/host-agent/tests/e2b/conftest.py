"""Fixtures of the E2B SDK suite: one long-lived sandbox shared by the tests
that only need a sandbox, and a unique id that tags every sandbox this run
creates (so list filters see only ours).

Run against a host agent with E2B_API_KEY, E2B_API_URL and E2B_SANDBOX_URL
set; `cargo test -p host-agent --test e2b` does all of it.
"""

import os
import subprocess
import sys
import time
import uuid

import pytest
from e2b import Sandbox

REQUIRED_ENV = ("E2B_API_KEY", "E2B_API_URL", "E2B_SANDBOX_URL")


def pytest_configure(config):
    missing = [name for name in REQUIRED_ENV if not os.environ.get(name)]
    if missing:
        raise pytest.UsageError(
            f"set {', '.join(missing)} to point the SDK at a Petrel host agent"
        )


@pytest.fixture(scope="session")
def run_id():
    return uuid.uuid4().hex[:12]


@pytest.fixture(scope="session")
def sbx(run_id):
    sandbox = Sandbox.create(
        metadata={"suite": run_id, "role": "main"},
        envs={"SUITE_VAR": "from-create"},
        timeout=900,
    )
    yield sandbox
    sandbox.kill()


# Two "public" addresses (just past 198.18.0.0/15, never routed anywhere but
# the test's own namespace), each with an HTTP server answering its name;
# "a" also answers on port 80 (HTTP) and 443 (HTTPS, self-signed), whatever
# host name a client asks for, for domain rules.
OUTSIDE_NS = "petrel-test-e2bout"
OUTSIDE = {"a": ("198.22.0.1", "198.22.0.2"), "b": ("198.23.0.1", "198.23.0.2")}
OUTSIDE_PORT = 8080

# HTTPS with a certificate made for the run (clients in the test skip its
# verification: what is tested is which names get through, not TLS).
TLS_SERVER = """
import http.server, ssl, sys
ip, root, cert, key = sys.argv[1:5]
handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=root, **k)
server = http.server.ThreadingHTTPServer((ip, 443), handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"""


def _ip(*args):
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def outside(tmp_path):
    """A namespace the test makes, reached from sandboxes through the
    host's routing: `{name: ip}` of its servers. Removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("a namespace standing for the internet needs root")
    _ip("netns", "add", OUTSIDE_NS)
    servers = []
    try:
        _ip("link", "add", "pte2bh", "type", "veth", "peer", "name", "pte2bo",
            "netns", OUTSIDE_NS)
        _ip("link", "set", "pte2bh", "up")
        _ip("-n", OUTSIDE_NS, "link", "set", "pte2bo", "up")
        _ip("-n", OUTSIDE_NS, "link", "set", "lo", "up")
        for name, (host_ip, ip) in OUTSIDE.items():
            _ip("addr", "add", f"{host_ip}/30", "dev", "pte2bh")
            _ip("-n", OUTSIDE_NS, "addr", "add", f"{ip}/30", "dev", "pte2bo")
            root = tmp_path / name
            root.mkdir()
            (root / "index.html").write_text(name)
            ports = [OUTSIDE_PORT] + ([80] if name == "a" else [])
            for port in ports:
                servers.append(subprocess.Popen(
                    ["ip", "netns", "exec", OUTSIDE_NS, sys.executable, "-m", "http.server",
                     "--bind", ip, "--directory", str(root), str(port)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                ))
        cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", "/CN=petrel-test", "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True,
        )
        servers.append(subprocess.Popen(
            ["ip", "netns", "exec", OUTSIDE_NS, sys.executable, "-c", TLS_SERVER,
             OUTSIDE["a"][1], str(tmp_path / "a"), str(cert), str(key)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))
        checks = [(name, f"http://{ip}:{OUTSIDE_PORT}/") for name, (_, ip) in OUTSIDE.items()]
        checks += [("a:80", f"http://{OUTSIDE['a'][1]}/"), ("a:443", f"https://{OUTSIDE['a'][1]}/")]
        for name, url in checks:
            deadline = time.monotonic() + 10
            while subprocess.run(
                ["ip", "netns", "exec", OUTSIDE_NS, "curl", "-skf", "-m", "1", url],
                capture_output=True,
            ).returncode != 0:
                assert time.monotonic() < deadline, f"server {name} ({url}) did not start"
                time.sleep(0.1)
        yield {name: ip for name, (_, ip) in OUTSIDE.items()}
    finally:
        for server in servers:
            server.kill()
            server.wait()
        subprocess.run(["ip", "link", "del", "pte2bh"], capture_output=True)
        subprocess.run(["ip", "netns", "del", OUTSIDE_NS], capture_output=True)
