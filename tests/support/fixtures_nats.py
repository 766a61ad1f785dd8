"""Pytest plugin: real NATS servers with JetStream (Debian's ``nats-server``).

``nats_server`` is one server, ``nats_cluster`` three servers in one JetStream cluster (streams
with replicas 3 survive one node down). Every server listens on free loopback ports, keeps its
store in the test's tmp folder and is stopped by pid. ``auth`` is a block of server
configuration (``authorization { ... }`` or ``accounts { ... }``) for the credential tests;
``extra`` any further block (``leafnodes { ... }``).
"""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.support import procs

SERVER_CONFIG = """\
server_name: {name}
listen: 127.0.0.1:{port}
http: 127.0.0.1:{http_port}
max_payload: {max_payload}
{jetstream}
{cluster}
{auth}
{tls}
{extra}
"""

JETSTREAM_BLOCK = """\
jetstream {{
  store_dir: "{store}"
  max_memory_store: 256MB
  max_file_store: 8GB
}}
"""

CLUSTER_BLOCK = """\
cluster {{
  name: {cluster_name}
  listen: 127.0.0.1:{cluster_port}
  routes: [{routes}]
}}
"""


class NatsServer:
    """One ``nats-server`` process. ``stop()``/``start()`` keep the store; ``kill()`` is SIGKILL."""

    def __init__(self, root: Path, name: str = "n1", auth: str = "", tls: str = "",
                 max_payload: int = 1024 * 1024, extra: str = "", jetstream: bool = True):
        self.binary = procs.require_binary("nats-server", "nats-server")
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.port = procs.free_port()
        self.http_port = procs.free_port()
        self.cluster_port = procs.free_port()
        self.auth, self.tls, self.max_payload, self.extra = auth, tls, max_payload, extra
        self.jetstream = jetstream
        self.scheme = "tls" if tls else "nats"
        self.url = f"{self.scheme}://127.0.0.1:{self.port}"
        self.config_path = root / f"{name}.conf"
        self.log_path = root / f"{name}.log"
        self.cluster_block = ""
        self.proc: subprocess.Popen | None = None

    def join(self, cluster_name: str, peers: list["NatsServer"]) -> None:
        """Route this server to ``peers`` (all nodes of the cluster, itself included)."""
        routes = ", ".join(f"nats-route://127.0.0.1:{p.cluster_port}" for p in peers
                           if p is not self)
        self.cluster_block = CLUSTER_BLOCK.format(cluster_name=cluster_name,
                                                  cluster_port=self.cluster_port, routes=routes)

    def write_config(self) -> None:
        self.config_path.write_text(SERVER_CONFIG.format(
            name=self.name, port=self.port, http_port=self.http_port,
            max_payload=self.max_payload, cluster=self.cluster_block, auth=self.auth,
            tls=self.tls, extra=self.extra,
            jetstream=JETSTREAM_BLOCK.format(store=self.root / "store") if self.jetstream
            else ""))

    def start(self, wait: bool = True) -> "NatsServer":
        self.write_config()
        self.proc = procs.start_process([self.binary, "-c", str(self.config_path)],
                                        self.log_path)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30) -> None:
        try:
            procs.wait_until(self.healthy, timeout, f"nats-server {self.name} on port "
                             f"{self.port}", interval=0.1)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{procs.tail(self.log_path)}") from None

    def stop(self) -> None:
        procs.stop_process(self.proc, timeout=20)

    def kill(self) -> None:
        if self.proc is not None:
            procs.kill_process(self.proc)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def monitor(self, path: str) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}",
                                    timeout=2) as response:
            return json.loads(response.read())

    def healthy(self) -> bool:
        if not self.running():
            raise RuntimeError(f"nats-server {self.name} exited with {self.proc.returncode}:\n"
                               f"{procs.tail(self.log_path)}")
        try:
            if self.cluster_block:
                meta = self.monitor("/jsz").get("meta_cluster") or {}
                return bool(meta.get("leader"))
            if not self.jetstream:
                return self.monitor("/healthz").get("status") == "ok"
            return self.monitor("/healthz?js-enabled-only=true").get("status") == "ok"
        except (OSError, ValueError):
            return False


class NatsCluster:
    """Three ``nats-server`` processes in one JetStream cluster."""

    def __init__(self, root: Path, size: int = 3, auth: str = "", tls: str = ""):
        self.nodes = [NatsServer(root / f"n{i + 1}", f"n{i + 1}", auth=auth, tls=tls)
                      for i in range(size)]
        for node in self.nodes:
            node.join("fleet", self.nodes)

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def start(self) -> "NatsCluster":
        for node in self.nodes:
            node.start(wait=False)
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        for node in self.nodes:
            if node.running():
                node.wait_ready(timeout)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def kill(self) -> None:
        for node in self.nodes:
            node.kill()


@pytest.fixture
def nats_server(tmp_path):
    """One running ``nats-server`` with JetStream, no authentication."""
    server = NatsServer(tmp_path / "nats").start()
    yield server
    server.stop()


@pytest.fixture
def nats_cluster(tmp_path):
    """A running three-node JetStream cluster, no authentication."""
    cluster = NatsCluster(tmp_path / "nats-cluster").start()
    yield cluster
    cluster.stop()
