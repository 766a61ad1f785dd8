"""Container images built and run with podman from Debian's packages, without a registry.

- ``ensure_base_image()``: ``localhost/ha-ingestor-test-base:bookworm``, a Debian bookworm made by
  ``debootstrap --variant=minbase`` with python3, python3-venv and ca-certificates, from the
  mirror apt already uses. The root file system is kept as a tarball under
  ``~/.cache/ha-ingestor/images/`` (about 2 minutes to make; an import takes seconds).
- ``build(dockerfile, context, tag, build_args)``: ``podman build --isolation chroot`` (the default
  isolation fails on these VMs' cgroups). RUN steps see the host's CA bundle, so pip reaches the
  package index through whatever TLS proxy the host trusts.
- ``Container``: ``podman --runtime runc run --ulimit host --network host`` with a containers.conf
  that sets no default ulimits (crun, and runc with podman's default ulimits, fail here). The
  container uses the host's network, so it reaches the test servers on 127.0.0.1 and binds only
  where its config says (the tests set loopback). Stopped and removed by name at teardown.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.support.ha_venv import file_lock   # the lock the HA venvs use in ~/.cache

BASE_IMAGE = "localhost/ha-ingestor-test-base:bookworm"
BASE_PACKAGES = "python3,python3-venv,ca-certificates"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
TRIM = ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man",
        "usr/share/locale")


class ImageError(RuntimeError):
    """A podman or debootstrap step failed; the message has its output."""


def cache_dir() -> Path:
    return Path.home() / ".cache" / "ha-ingestor" / "images"


def containers_conf() -> Path:
    path = cache_dir() / "containers.conf"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_text("[containers]\ndefault_ulimits = []\n")
    return path


def podman(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "CONTAINERS_CONF": str(containers_conf())}
    result = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout,
                            env=env)
    if check and result.returncode != 0:
        raise ImageError(f"podman {' '.join(args[:3])} ... failed ({result.returncode}):\n"
                         f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def image_exists(name: str) -> bool:
    return podman("image", "exists", name, check=False).returncode == 0


def ensure_base_image() -> str:
    """The base image, imported from the cached root file system (made first if missing)."""
    if image_exists(BASE_IMAGE):
        return BASE_IMAGE
    tarball = cache_dir() / "debian-bookworm-python3.tar"
    with file_lock(cache_dir() / "base.lock"):
        if not image_exists(BASE_IMAGE):
            if not tarball.exists():
                _debootstrap(tarball)
            podman("import", str(tarball), BASE_IMAGE)
    return BASE_IMAGE


def _debootstrap(tarball: Path) -> None:
    with tempfile.TemporaryDirectory(dir=tarball.parent) as tmp:
        rootfs = Path(tmp) / "rootfs"
        result = subprocess.run(["debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}",
                                 "bookworm", str(rootfs), debian_mirror()],
                                capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            raise ImageError(f"debootstrap failed ({result.returncode}):\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        for sub in TRIM:
            for child in (rootfs / sub).glob("*"):
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() \
                    else child.unlink()
        partial = tarball.with_suffix(".partial")
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(partial), "."], check=True)
        partial.rename(tarball)


def debian_mirror() -> str:
    """The Debian archive apt uses here (the bookworm suite itself, not security or updates)."""
    policy = subprocess.run(["apt-cache", "policy"], capture_output=True, text=True).stdout
    for match in re.finditer(r"^\s*\d+ (\S+) bookworm/main ", policy, re.M):
        return match.group(1)
    return "http://deb.debian.org/debian"


def build(dockerfile: Path, context: Path, tag: str, build_args: dict[str, str]) -> str:
    args = ["build", "--isolation", "chroot", "--format", "docker", "--file", str(dockerfile),
            "--tag", tag]
    if Path(CA_BUNDLE).exists():
        args += ["--volume", f"{CA_BUNDLE}:{CA_BUNDLE}:ro"]
    for name, value in build_args.items():
        args += ["--build-arg", f"{name}={value}"]
    podman(*args, str(context), timeout=900)
    return tag


def inspect(name: str) -> dict:
    return json.loads(podman("inspect", name).stdout)[0]


class Container:
    """One container started by a test; ``stop()`` sends SIGTERM through podman and waits."""

    def __init__(self, image: str, name: str, args: list[str] = (), env: dict | None = None,
                 volumes: dict[str, str] | None = None, entrypoint: str | None = None):
        self.name = name
        argv = ["--runtime", "runc", "run", "--detach", "--name", name, "--ulimit", "host",
                "--network", "host"]
        for key, value in (env or {}).items():
            argv += ["--env", f"{key}={value}"]
        for source, target in (volumes or {}).items():
            argv += ["--volume", f"{source}:{target}"]
        if entrypoint:
            argv += ["--entrypoint", entrypoint]
        podman("rm", "--force", name, check=False)
        podman(*argv, image, *args)

    def running(self) -> bool:
        return inspect(self.name)["State"]["Running"]

    def logs(self) -> str:
        result = podman("logs", self.name, check=False)
        return (result.stdout + result.stderr)[-6000:]

    def stop(self, timeout: int = 45) -> int:
        """SIGTERM (podman kills after ``timeout`` s); the container's exit code."""
        podman("stop", "--time", str(timeout), self.name, timeout=timeout + 30)
        return inspect(self.name)["State"]["ExitCode"]

    def remove(self) -> None:
        podman("rm", "--force", self.name, check=False)


def run_once(image: str, command: list[str], volumes: dict[str, str] | None = None,
             timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``command`` in a throw-away container (the host's CA bundle mounted for pip)."""
    argv = ["--runtime", "runc", "run", "--rm", "--ulimit", "host", "--network", "host"]
    mounts = dict(volumes or {})
    if Path(CA_BUNDLE).exists():
        mounts[CA_BUNDLE] = f"{CA_BUNDLE}:ro"
    for source, target in mounts.items():
        argv += ["--volume", f"{source}:{target}"]
    return podman(*argv, image, *command, timeout=timeout, check=False)
