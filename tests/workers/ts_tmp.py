"""TEMPORARY TorchServe launcher for the worker tests until tests/fixtures/torchserve.py lands."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.fixtures.ports import free_port

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]


class TS:
    def __init__(self, root: Path, store: Path):
        self.root, self.store = root, store
        self.ports = {k: free_port() for k in ("inf", "mgmt", "met", "g1", "g2", "w")}
        self.inference_url = f"http://127.0.0.1:{self.ports['inf']}"
        self.management_url = f"http://127.0.0.1:{self.ports['mgmt']}"
        self.proc = None
        (root / "tmp").mkdir(parents=True, exist_ok=True)
        cfg = (ROOT / "config.properties").read_text()
        p = self.ports
        lines = [l for l in cfg.splitlines() if not l.split("=")[0] in (
            "inference_address", "management_address", "metrics_address", "grpc_inference_port",
            "grpc_management_port")]
        lines += [f"inference_address={self.inference_url}", f"management_address={self.management_url}",
                  f"metrics_address=http://127.0.0.1:{p['met']}", f"grpc_inference_port={p['g1']}",
                  f"grpc_management_port={p['g2']}", f"initial_worker_port={p['w']}",
                  f"model_store={store}", "load_models=classifier=classifier-1.0.mar"]
        self.config = root / "config.properties"
        self.config.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 180) -> None:
        env = dict(os.environ, TMPDIR=str(self.root / "tmp"), LOG_LOCATION=str(self.root / "logs"),
                   METRICS_LOCATION=str(self.root / "logs"))
        log = open(self.root / "ts.out", "ab")
        self.proc = subprocess.Popen(
            [str(BIN / "torchserve"), "--start", "--foreground", "--ncs", "--ts-config", str(self.config),
             "--model-store", str(self.store)],
            cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                r = httpx.get(f"{self.management_url}/models/classifier", timeout=2)
                if r.status_code == 200 and any(w.get("status") == "READY"
                                                for m in r.json() for w in m.get("workers", [])):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError("torchserve not ready: " + (self.root / "ts.out").read_text()[-2000:])

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=30)
        self.proc = None
        time.sleep(0.5)
