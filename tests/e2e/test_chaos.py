"""`make chaos` in its short form: each part of the real local stack killed with SIGKILL mid-burst.

Runs `bench/chaos.py --short` (its own stack on free ports, short worker timings) as `make chaos`
would, and checks its JSON report: for every fault the images in flight all end DONE or FAILED
(none lost), the killed program came back, one processed object per DONE image and no other, and
the DLQ holds nothing unexplained.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.aws, pytest.mark.torchserve]

ROOT = Path(__file__).resolve().parents[2]
FAULTS = ["worker", "torchserve-worker", "torchserve", "sqs", "s3", "dynamodb"]


@pytest.fixture(scope="module")
def chaos_report(torchserve_model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("chaos")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UDAGRAM_", "AWS_"))}
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "chaos.py"), "--short", "--report", str(out),
         "--model-store", str(torchserve_model_store)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=900)
    finally:
        if process.poll() is None:  # timed out: its stack goes with its process group
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=120)
    report = json.loads((out / "chaos-short.json").read_text())
    report["exit_code"], report["output"] = process.returncode, output[-6000:]
    return report


def test_chaos_run_passes(chaos_report: dict) -> None:
    assert chaos_report["exit_code"] == 0, chaos_report["output"]
    assert chaos_report["passed"] is True
    assert [row["fault"] for row in chaos_report["rows"]] == FAULTS


@pytest.mark.parametrize("fault", FAULTS)
def test_nothing_in_flight_is_lost(chaos_report: dict, fault: str) -> None:
    [row] = [r for r in chaos_report["rows"] if r["fault"] == fault]
    assert row["killed_pids"], row
    assert row["in_flight"] > 0, row  # the kill really happened mid-burst
    assert row["lost"] == 0 and row["recovered"] == row["in_flight"], row
    assert row["seconds_back"] is not None and row["seconds_to_recover"] is not None, row


def test_end_state_every_upload_final_one_processed_object_each(chaos_report: dict) -> None:
    checks = chaos_report["checks"]
    assert checks["uploaded"] == 8 * len(FAULTS) and checks["client_gave_up"] == []
    assert checks["stuck_or_lost"] == []
    assert all(reason for reason in checks["failed"].values()), checks["failed"]  # FAILED says why
    assert checks["duplicate_or_stray_processed_objects"] == [] and checks["missing_processed_objects"] == []
    assert checks["processed_objects"] == checks["by_status"].get("DONE", 0)
    assert [m for m in checks["dlq"] if not m["reason"]] == []
