"""wss:// to Home Assistant: a CA file with hostname verification, verification off, and an
untrusted certificate (a clear log line, retried with backoff, never a crash)."""

from __future__ import annotations

import signal
import ssl
import subprocess
import time

import pytest

from tests.support.fixtures_homeassistant import collector_overrides, state_changes, state_key
from tests.support.ha_test_server import HATestServer
from tests.support.procs import require_binary, tail, wait_until


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it."""
    openssl = require_binary("openssl", "openssl")
    folder = tmp_path_factory.mktemp("tls")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=folder, check=True, capture_output=True)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=ha-ingestor test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=127.0.0.1")
    (folder / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "san.cnf")
    return folder


@pytest.fixture
def tls_server(certs):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs / "server.pem", certs / "server.key")
    server = HATestServer(token="tls-token", ssl_context=context).start()
    yield server
    server.stop()


def collect_one_change(ing, server) -> None:
    server.wait_for_subscribers(1, timeout=30)
    event = server.set_state("sensor.over_tls", "1")
    wanted = ("sensor.over_tls", event["time_fired"])
    wait_until(lambda: wanted in {state_key(e) for e in state_changes(ing.read_all("ha"))},
               30, "the state change over TLS")


@pytest.mark.parametrize("tls", ["ca_file", "verify_off"])
def test_wss_with_ca_file_or_without_verification(ingestor, tls_server, certs, tls):
    settings = ({"ca_file": str(certs / "ca.pem")} if tls == "ca_file" else {"verify": False})
    ing = ingestor(collector_overrides(tls_server.url, tls_server.token, tls=settings))
    assert tls_server.url.startswith("wss://127.0.0.1:")
    proc = ing.start("collect", "ha", log="ha")
    try:
        collect_one_change(ing, tls_server)
    except TimeoutError:
        pytest.fail(tail(ing.log_path("ha")))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0


def test_untrusted_certificate_is_a_clear_error_and_retried(ingestor, tls_server):
    ing = ingestor(collector_overrides(tls_server.url, tls_server.token))
    proc = ing.start("collect", "ha", log="ha")
    wait_until(lambda: "not trusted" in ing.log_path("ha").read_text(), 30,
               "the certificate error in the log")
    time.sleep(1.5)
    assert proc.poll() is None, "an untrusted certificate must not crash the collector"
    assert tls_server.stats["auth_ok"] == 0
    text = ing.log_path("ha").read_text()
    assert "homeassistant.tls.ca_file" in text and "reconnecting" in text
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
