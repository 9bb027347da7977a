"""The CDK app synthesized once per session, in a subprocess, exactly as `make synth` runs it.

A subprocess keeps the synthesis (which reconfigures the PynamoDB models and starts a Node
process) out of the test process, and runs without any UDAGRAM_* variable, so what the template
holds are the settings' defaults.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "deploy" / "app.py"
STACK = "Udagram"
NODE_BANNERS = {"JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION": "1",
                "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20"}
sys.path.insert(0, str(APP.parent))  # the app's own modules (infra.*) for unit tests of its pieces
for _name, _value in NODE_BANNERS.items():  # aws_cdk.assertions starts Node in this process too
    os.environ.setdefault(_name, _value)


@dataclass
class Synth:
    returncode: int
    output: str
    outdir: Path

    @property
    def template_path(self) -> Path:
        return self.outdir / f"{STACK}.template.json"

    @property
    def template(self) -> dict[str, Any]:
        return json.loads(self.template_path.read_text())

    def resources(self, type_: str) -> dict[str, dict[str, Any]]:
        return {k: r for k, r in self.template["Resources"].items() if r["Type"] == type_}


def synthesize(outdir: Path, context: dict[str, str] | None = None) -> Synth:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UDAGRAM_", "AWS_", "CDK_"))}
    env.update(NODE_BANNERS, CDK_OUTDIR=str(outdir), CDK_CONTEXT_JSON=json.dumps(context or {}))
    result = subprocess.run([sys.executable, str(APP)], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300)
    synth = Synth(result.returncode, result.stdout + result.stderr, outdir)
    assert result.returncode == 0, f"synthesis failed:\n{synth.output[-4000:]}"
    return synth


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    """The default stack: TorchServe on Fargate CPU."""
    return synthesize(tmp_path_factory.mktemp("cdk-out"))


@pytest.fixture(scope="session")
def gpu_synth(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    """The stack with `-c model_server_gpu=true`."""
    return synthesize(tmp_path_factory.mktemp("cdk-out-gpu"), {"model_server_gpu": "true"})


@pytest.fixture(scope="session")
def template(synth: Synth):
    from aws_cdk.assertions import Template

    return Template.from_json(synth.template)
