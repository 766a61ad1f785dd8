"""What an administrator's shell and log pipeline see: shell completion (run in a real bash),
JSON log lines that name the component, and the ``build_info`` metric of every process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ha_ingestor import __version__
from tests.support.fixtures_homeassistant import metric, scrape
from tests.support.procs import free_port, wait_until

BIN = Path(sys.executable).parent


def _complete(words: list[str]) -> list[str]:
    script = ('eval "$(ha-ingestor completion bash)"; COMP_WORDS=(%s); COMP_CWORD=%d; '
              '_ha_ingestor_completion ha-ingestor; printf "%%s\\n" "${COMPREPLY[@]}"'
              % (" ".join(f"'{w}'" for w in words), len(words) - 1))
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_bash_completion_completes_commands_and_options():
    assert _complete(["ha-ingestor", "qu"]) == ["queue"]
    assert _complete(["ha-ingestor", "queue", "st"]) == ["status"]
    assert "--connect" in _complete(["ha-ingestor", "config", "check", "--"])
    assert set(_complete(["ha-ingestor", "--log-format", ""])) == {"text", "json"}


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_completion_scripts_for_other_shells(shell):
    done = subprocess.run([sys.executable, "-m", "ha_ingestor", "completion", shell],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "_HA_INGESTOR_COMPLETE" in done.stdout


def test_json_logs_name_the_component_and_build_info_is_exported(ingestor):
    port = free_port()
    ing = ingestor({"influxdb": {"url": f"http://127.0.0.1:{free_port()}"},
                    "metrics": {"ports": {"writer": port}}})
    proc = ing.start("--log-format", "json", "write", log="writer")
    log = ing.log_path("writer")
    wait_until(lambda: "writer started" in log.read_text(), 30, "writer started")
    samples = scrape(port)
    assert metric(samples, "ha_ingestor_build_info", version=__version__,
                  python=sys.version.split()[0], component="writer") == 1
    proc.terminate()
    assert proc.wait(30) == 0
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert lines and all(line["component"] == "writer" for line in lines)
    assert any("writer started" in line["message"] for line in lines)
