"""Start and stop the processes a test needs: free loopback ports, readiness waits, stop by pid."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_binary(name: str, package: str) -> str:
    """Path of ``name``. Missing: fails under CI=true (never a silent skip there), skips elsewhere."""
    path = shutil.which(name) or next((p for p in (f"/usr/bin/{name}", f"/usr/sbin/{name}")
                                       if os.access(p, os.X_OK)), None)
    if path:
        return path
    import pytest
    message = f"{name} not found: install the Debian package {package!r} (make test does)"
    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_until(check, timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll ``check()`` until it is true; raise TimeoutError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise TimeoutError(f"{what} not ready after {timeout:.0f} s")


def start_process(argv: list[str], log_path: Path, env: dict | None = None,
                  cwd: Path | None = None) -> subprocess.Popen:
    """Start ``argv`` in its own process group with stdout+stderr appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                            start_new_session=True)


def stop_process(proc: subprocess.Popen | None, timeout: float = 10.0,
                 sig: int = signal.SIGTERM) -> int | None:
    """Stop a process this code started, by its pid: ``sig``, then SIGKILL after ``timeout``."""
    if proc is None or proc.poll() is not None:
        return None if proc is None else proc.returncode
    try:
        os.kill(proc.pid, sig)
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        return proc.wait(timeout)
    except ProcessLookupError:
        return proc.wait(timeout)


def kill_process(proc: subprocess.Popen) -> None:
    """SIGKILL by pid and reap."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"({path} does not exist)"
