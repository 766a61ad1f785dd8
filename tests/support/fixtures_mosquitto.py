"""A real Mosquitto broker for tests and benchmarks, plus a fast paho publisher.

pytest plugin: the ``mosquitto`` fixture starts Debian's ``mosquitto`` on a free 127.0.0.1 port with
a generated config (persistence on, in a tmp dir; ``max_queued_messages`` raised as
deploy/mosquitto.conf does). ``mosquitto_factory`` starts more, e.g. one with a password file.

Without pytest (benchmarks): ``MosquittoServer(binary, workdir).start()``.
"""

from __future__ import annotations

import getpass
import os
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import procs

MOSQUITTO_PACKAGE = "mosquitto"


class MosquittoServer:
    """One broker process. ``stop()``/``start()`` keep the port and the persistence directory, so a
    restart brings back the persistent sessions and their queued messages."""

    host = "127.0.0.1"

    def __init__(self, binary: str, workdir: Path, port: int | None = None,
                 users: dict[str, str] | None = None, extra_conf: tuple[str, ...] = (),
                 max_inflight_messages: int = 1000, queue_qos0_messages: bool = False):
        self.binary = binary
        self.workdir = Path(workdir)
        self.port = port or procs.free_port()
        self.users = users
        self.extra_conf = extra_conf
        self.max_inflight_messages = max_inflight_messages
        self.queue_qos0_messages = queue_qos0_messages
        self.data_dir = self.workdir / "data"
        self.conf_path = self.workdir / "mosquitto.conf"
        self.log_path = self.workdir / "mosquitto.log"
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def write_config(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lines = [
            f"listener {self.port} {self.host}",
            # Root drops privileges to the 'mosquitto' user by default; keep ours so that the
            # tmp data dir stays writable.
            f"user {getpass.getuser()}",
            "persistence true",
            f"persistence_location {self.data_dir}/",
            "autosave_interval 60",
            # Mosquitto's default of 1000 silently drops QoS 1 messages for a slow or offline
            # persistent client; the tests publish far more than that.
            "max_queued_messages 1000000",
            f"max_inflight_messages {self.max_inflight_messages}",
            f"queue_qos0_messages {'true' if self.queue_qos0_messages else 'false'}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "log_dest stderr",
            "connection_messages true",
        ]
        if self.users is not None:
            passwd = self.workdir / "passwd"
            passwd.write_text("")
            for user, password in self.users.items():
                subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, password],
                               check=True, capture_output=True)
            lines += ["allow_anonymous false", f"password_file {passwd}"]
        else:
            lines.append("allow_anonymous true")
        lines += list(self.extra_conf)
        self.conf_path.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 10.0) -> "MosquittoServer":
        if self.pid is not None:
            raise RuntimeError(f"mosquitto already running (pid {self.pid})")
        if not self.conf_path.exists():
            self.write_config()
        self.proc = procs.start_process([self.binary, "-c", str(self.conf_path)], self.log_path)
        try:
            procs.wait_until(lambda: procs.port_open(self.port) or self.proc.poll() is not None,
                             timeout, f"mosquitto on port {self.port}")
        except TimeoutError:
            procs.kill_process(self.proc)
            raise
        if self.proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited with {self.proc.returncode}:\n"
                               f"{procs.tail(self.log_path)}")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop: Mosquitto writes its persistence file on SIGTERM."""
        procs.stop_process(self.proc, timeout)
        procs.wait_until(lambda: not procs.port_open(self.port), timeout,
                         f"port {self.port} released")

    def kill(self) -> None:
        if self.proc is not None:
            procs.kill_process(self.proc)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self, lines: int = 40) -> str:
        return procs.tail(self.log_path, lines)


def make_certificates(directory: Path, host: str = "127.0.0.1") -> dict[str, Path]:
    """A throw-away CA and a server certificate for ``host`` (as an IP SAN), made with the
    openssl command line: ``{"ca": ..., "cert": ..., "key": ...}`` PEM files."""
    directory.mkdir(parents=True, exist_ok=True)
    openssl = procs.require_binary("openssl", "openssl")
    files = {name: directory / f"{name}.pem" for name in ("ca", "ca_key", "cert", "key", "csr")}

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test CA",
        "-keyout", str(files["ca_key"]), "-out", str(files["ca"]))
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={host}",
        "-keyout", str(files["key"]), "-out", str(files["csr"]))
    ext = directory / "san.ext"
    ext.write_text(f"subjectAltName=IP:{host}\n")
    run("x509", "-req", "-in", str(files["csr"]), "-CA", str(files["ca"]), "-CAkey",
        str(files["ca_key"]), "-CAcreateserial", "-days", "2", "-extfile", str(ext),
        "-out", str(files["cert"]))
    return {"ca": files["ca"], "cert": files["cert"], "key": files["key"]}


def tls_listener_conf(certs: dict[str, Path]) -> tuple[str, ...]:
    """Config lines that turn the broker's one listener into a TLS listener."""
    return (f"cafile {certs['ca']}", f"certfile {certs['cert']}", f"keyfile {certs['key']}")


def mosquitto_binary() -> str:
    return procs.require_binary("mosquitto", MOSQUITTO_PACKAGE)


@pytest.fixture
def mosquitto_factory(tmp_path):
    """``mosquitto_factory(name="broker", **kwargs) -> MosquittoServer`` (started); all stopped at
    the end of the test."""
    binary = mosquitto_binary()
    started: list[MosquittoServer] = []

    def make(name: str = "broker", start: bool = True, **kwargs) -> MosquittoServer:
        server = MosquittoServer(binary, tmp_path / name, **kwargs)
        started.append(server)
        return server.start() if start else server

    yield make
    for server in started:
        server.kill()


@pytest.fixture
def mosquitto(mosquitto_factory) -> MosquittoServer:
    """A running broker: persistence on, anonymous access, queue limits raised."""
    return mosquitto_factory()


# --- publishing -------------------------------------------------------------------------------


@dataclass
class PublishResult:
    sent: int            # publish() calls made
    acked: list[int]     # indexes of the messages the broker acknowledged (all of them for QoS 0)
    seconds: float


def make_payload(index: int, size: int = 0) -> bytes:
    """Payload ``m<index>``, padded with ``.`` to ``size`` bytes, so a test can tell messages apart."""
    body = f"m{index}".encode()
    return body + b"." * max(0, size - len(body))


def publish(port: int, count: int, topic: str = "bench/{i}", qos: int = 1, start: int = 0,
            payload_size: int = 0, payloads: list[bytes] | None = None, retain: bool = False,
            host: str = "127.0.0.1", client_id: str | None = None, timeout: float = 120.0,
            tolerate_disconnect: bool = False, pace: float | None = None,
            username: str | None = None, password: str | None = None,
            ca_file: Path | None = None, topics: list[str] | None = None) -> PublishResult:
    """Publish ``count`` messages as fast as paho allows (or ``pace`` messages/s) and wait until
    the broker acknowledged every QoS 1 message. ``topic`` may contain ``{i}`` (message index,
    from ``start``); ``topics`` gives each message its own topic instead.

    With ``tolerate_disconnect`` the client keeps its session and reconnects, and paho re-sends
    what the broker had not acknowledged (a broker restart mid-stream); the result lists what the
    broker *did* acknowledge."""
    import paho.mqtt.client as mqtt

    connected = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                         client_id=client_id or f"test-pub-{os.getpid()}-{time.monotonic_ns()}",
                         clean_session=not tolerate_disconnect)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    if username:
        client.username_pw_set(username, password)
    if ca_file:
        client.tls_set(ca_certs=str(ca_file))

    def on_connect(_c, _u, _flags, reason_code, _props):
        if not reason_code.is_failure:
            connected.set()

    client.on_connect = on_connect
    client.reconnect_delay_set(0.1, 1)
    client.connect(host, port, keepalive=30)
    client.loop_start()
    began = time.monotonic()
    infos = []
    try:
        if not connected.wait(10):
            raise TimeoutError(f"publisher could not connect to {host}:{port}")
        for n in range(count):
            i = start + n
            data = payloads[n] if payloads is not None else make_payload(i, payload_size)
            if qos and n >= _WINDOW:
                _wait_published(infos[n - _WINDOW], began + timeout)
            name = topics[n] if topics is not None else topic.format(i=i)
            infos.append(client.publish(name, data, qos=qos, retain=retain))
            if pace:
                time.sleep(max(0.0, began + (n + 1) / pace - time.monotonic()))
        deadline = time.monotonic() + timeout
        while qos and time.monotonic() < deadline:
            if all(_acked(info) for info in infos[-1000:]) and all(map(_acked, infos)):
                break
            time.sleep(0.02)
        seconds = time.monotonic() - began
    finally:
        client.disconnect()
        client.loop_stop()
    acked = [start + n for n, info in enumerate(infos) if not qos or _acked(info)]
    if len(acked) < count and not tolerate_disconnect:
        raise TimeoutError(f"{count - len(acked)} of {count} messages not acknowledged "
                           f"by the broker after {timeout:.0f} s")
    return PublishResult(len(infos), acked, seconds)


_WINDOW = 30000   # unacknowledged publishes at most: paho's packet ids wrap at 65535


def _acked(info) -> bool:
    # Not info.is_published(): it raises for a message published while disconnected, even after
    # paho re-sent it on reconnect and the broker acknowledged it.
    return info._published


def _wait_published(info, deadline: float) -> None:
    while not _acked(info) and time.monotonic() < deadline:
        time.sleep(0.001)


def publisher_process(port: int, count: int, **kwargs) -> subprocess.Popen:
    """Run ``publish`` in a separate Python process (the collector must not share its CPU time
    slice with the publisher's). Prints one line ``published <n> in <s> s`` and exits 0."""
    import json
    import sys
    root = Path(__file__).resolve().parents[2]
    code = ("import json, sys\n"
            "from tests.support.fixtures_mosquitto import publish\n"
            "kw = json.loads(sys.argv[3])\n"
            "r = publish(int(sys.argv[1]), int(sys.argv[2]), **kw)\n"
            "print(f'published {len(r.acked)} in {r.seconds:.3f} s', flush=True)\n")
    return subprocess.Popen([sys.executable, "-c", code, str(port), str(count), json.dumps(kwargs)],
                            cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
