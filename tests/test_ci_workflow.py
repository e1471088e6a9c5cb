"""The CI workflow (.github/workflows/ci.yml) against GitHub's workflow schema and zizmor's
security audits, both offline: a proxy that refuses every connection stands in for no network."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"
BIN = Path(sys.executable).parent
OFFLINE = {
    **os.environ,
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "HTTP_PROXY": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9",
    "http_proxy": "http://127.0.0.1:9",
    "NO_PROXY": "",
}


@pytest.mark.parametrize(
    "command",
    [
        ["check-jsonschema", "--builtin-schema", "vendor.github-workflows"],
        ["zizmor", "--offline", "--persona", "pedantic", "--no-progress"],
    ],
    ids=["schema", "zizmor"],
)
def test_workflow_passes_its_linter_offline(command: list[str]) -> None:
    done = subprocess.run(
        [str(BIN / command[0]), *command[1:], str(WORKFLOW)], capture_output=True, text=True, env=OFFLINE, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_workflow_runs_ci_on_every_push_and_pull_request() -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    assert set(workflow[True]) == {"push", "pull_request"}  # YAML 1.1 reads the key `on` as true
    steps = workflow["jobs"]["test"]["steps"]
    assert workflow["jobs"]["test"]["runs-on"] == "ubuntu-latest"
    assert any(
        step.get("uses", "").startswith("actions/setup-python@") and step["with"]["cache"] == "pip" for step in steps
    )
    assert steps[-1]["run"].endswith("bash .ci/run")


def test_the_container_cache_lives_outside_the_checkout(tmp_path: Path) -> None:
    """vfs keeps whole image copies (1.9 GB after one `make container-test`): not in the checkout."""
    where = subprocess.run(
        [str(ROOT / ".ci" / "container-cache")],
        capture_output=True,
        text=True,
        check=True,
        env={"HOME": str(tmp_path), "PATH": os.environ["PATH"]},
    ).stdout.strip()
    assert Path(where) == tmp_path / ".cache" / "travel-recharge-api" / "container"
    for script in (".ci/podman", ".ci/container-build"):
        text = (ROOT / script).read_text()
        assert "container-cache" in text and ".cache/container" not in text, script
