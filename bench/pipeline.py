"""Worker pipeline benchmark: per-stage cost, burst throughput vs the model server, idle latency.

Starts its own servers on free loopback ports (a moto server subprocess for S3/SQS/DynamoDB and a
TorchServe with the default classifier archive, via handlers.server like the test fixtures), then:

1. Per-stage cost (lease, download, decode, predict, render, upload, update) of one image through
   `workers.processor.Processor`, medians over N runs, for a 0.3 MP and a 12 MP JPEG.
   Goal: decode + render of the 12 MP JPEG <= 150 ms.
2. Model server throughput: direct `POST /predictions/classifier` of the bytes the worker would
   send, from as many concurrent clients as the worker keeps in flight.
3. Burst: 200 uploads (0.3 MP JPEGs) into the originals bucket while `udagram worker` (a
   subprocess, as the stack runs it) consumes: images/s from the first upload to the last DONE.
   Goal: >= 0.8 x the model server's throughput (2.).
4. Idle latency: one upload at a time, upload start -> record DONE. Goal: p50 <= 500 ms.

Run: .venv/bin/python bench/pipeline.py [--burst 200] [--samples 10]
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from handlers.archive import DEFAULT_VERSION, archive_path, ensure_default_archive  # noqa: E402
from handlers.server import Endpoints, TorchServeProcess  # noqa: E402
from tests.fixtures.aws import moto_settings  # noqa: E402
from tests.fixtures.ports import free_port  # noqa: E402
from udagram import data, resources  # noqa: E402
from udagram.aws import client  # noqa: E402
from udagram.settings import Settings  # noqa: E402

BIN = Path(sys.executable).parent
STAGES = ("lease", "download", "decode", "predict", "render", "upload", "update")


def photo_jpeg(size: tuple[int, int], name: str = "chelsea") -> bytes:
    import skimage.data
    from PIL import Image

    img = Image.fromarray(getattr(skimage.data, name)()).resize(size, Image.Resampling.BICUBIC)
    out = io.BytesIO()
    img.save(out, "JPEG", quality=92)
    return out.getvalue()


def start_moto(run_dir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = (run_dir / "moto.log").open("wb")
    proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/moto-api/", timeout=2)
            return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError("moto server did not start")


def new_image(settings: Settings) -> str:
    image_id = data.new_id()
    now = data.utcnow()
    data.ImageModel(image_id, group_id="b" * 32, created_key=data.created_key(now, image_id), owner="bench",
                    status_changed_at=now.isoformat(), content_type="image/jpeg",
                    content_length=0, original_key=data.original_key(image_id, "image/jpeg"),
                    created_at=now).save()
    return image_id


def put_original(s3, settings: Settings, image_id: str, body: bytes) -> None:
    s3.put_object(Bucket=settings.originals_bucket, Key=data.original_key(image_id, "image/jpeg"), Body=body,
                  ContentType="image/jpeg")


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.1f}"


def stage_costs(settings: Settings, body: bytes, samples: int) -> dict[str, float]:
    from workers.events import ImageTask
    from workers.processor import Outcome, Processor

    processor = Processor(settings)
    s3 = client("s3", settings)
    runs: list[dict[str, float]] = []
    for n in range(samples + 1):
        image_id = new_image(settings)
        put_original(s3, settings, image_id, body)
        result = processor.process(ImageTask(image_id=image_id, source="reprocess"), processor.new_token())
        assert result.outcome is Outcome.DONE, result
        if n:  # the first run warms connections and caches
            runs.append(result.timings)
    processor.classifier.close()
    return {stage: statistics.median(r.get(stage, 0.0) for r in runs) for stage in STAGES}


def model_throughput(settings: Settings, body: bytes, clients: int, total: int) -> float:
    url = f"{settings.torchserve_inference_url}/predictions/{settings.model_name}"
    with httpx.Client(limits=httpx.Limits(max_connections=clients)) as http:
        def one(_: int) -> None:
            r = http.post(url, content=body, headers={"Content-Type": "application/octet-stream"}, timeout=60)
            r.raise_for_status()

        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(one, range(clients * 2)))  # warm-up
            start = time.perf_counter()
            list(pool.map(one, range(total)))
            return total / (time.perf_counter() - start)


def worker_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UDAGRAM_", "AWS_"))}
    for name in ("queue_name", "dead_letter_queue_name", "originals_bucket", "processed_bucket", "images_table",
                 "groups_table", "torchserve_inference_url", "worker_concurrency", "log_level"):
        env[f"UDAGRAM_{name.upper()}"] = str(getattr(settings, name))
    env.update({"AWS_ENDPOINT_URL": settings.s3_endpoint_url, "AWS_REGION": settings.aws_region,
                "AWS_ACCESS_KEY_ID": settings.aws_access_key_id,
                "AWS_SECRET_ACCESS_KEY": settings.aws_secret_access_key,
                "UDAGRAM_DATA_DIR": str(settings.data_dir), "UDAGRAM_WORKER_RECONCILE_ON_START": "false"})
    return env


def wait_done(ids: list[str], timeout: float) -> dict[str, float]:
    """Poll until every image is DONE; returns image id -> time first seen DONE."""
    done: dict[str, float] = {}
    pending = list(ids)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for start in range(0, len(pending), 100):
            for rec in data.ImageModel.batch_get(pending[start:start + 100]):
                if rec.status == "DONE":
                    done.setdefault(rec.id, time.perf_counter())
                elif rec.status == "FAILED":
                    raise RuntimeError(f"{rec.id} FAILED: {rec.error}")
        pending = [i for i in pending if i not in done]
        time.sleep(0.05)
    if pending:
        raise RuntimeError(f"{len(pending)} images not DONE after {timeout}s")
    return done


def group_cpu_seconds(pgid: int) -> float:
    """CPU time (user + system) of the live processes of a process group, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[2]) == pgid:  # fields[0] is the state; pgrp is the 5th field of stat
            total += int(fields[11]) + int(fields[12])
    return total / tick


class WorkerCounter:
    """Images DONE by the worker, read from its Prometheus endpoint: waiting on it costs the
    moto server nothing (polling DynamoDB would load the server the worker depends on)."""

    def __init__(self, port: int):
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.http = httpx.Client()

    def done(self) -> int:
        for line in self.http.get(self.url, timeout=5).text.splitlines():
            if line.startswith("udagram_worker_images_processed_total "):
                return int(float(line.split()[1]))
        return 0

    def wait(self, target: int, timeout: float, interval: float = 0.005) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.done() >= target:
                return time.perf_counter()
            time.sleep(interval)
        raise RuntimeError(f"worker did not reach {target} images in {timeout}s")


def burst(settings: Settings, body: bytes, ids: list[str], counter: WorkerCounter) -> float:
    """The records exist already (the API creates them before handing out the upload URL)."""
    s3 = client("s3", settings, max_pool_connections=16)
    count = len(ids)
    base = counter.done()
    start = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: put_original(s3, settings, i, body), ids))
    end = counter.wait(base + count, 600, interval=0.05)
    wait_done(ids, 60)  # and every record really is DONE
    return count / (end - start)


def idle_latency(settings: Settings, body: bytes, samples: int, counter: WorkerCounter) -> list[float]:
    s3 = client("s3", settings)
    latencies = []
    for _ in range(samples):
        image_id = new_image(settings)
        base = counter.done()
        start = time.perf_counter()
        put_original(s3, settings, image_id, body)
        latencies.append(counter.wait(base + 1, 60) - start)
        time.sleep(0.3)
    wait_done([image_id], 10)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=8, help="worker_concurrency and model clients")
    args = parser.parse_args()

    run_dir = Path(tempfile.mkdtemp(prefix="udagram-bench-pipeline-"))
    moto, moto_url = start_moto(run_dir)
    store = Path(ROOT / "model-store")
    ensure_default_archive(Settings(model_store=store))
    ts = TorchServeProcess(Endpoints("127.0.0.1", free_port(), free_port(), free_port(), free_port(), free_port()),
                           store, run_dir / "torchserve", {"classifier": archive_path(store, DEFAULT_VERSION).name})
    (run_dir / "torchserve").mkdir()
    worker: subprocess.Popen | None = None
    try:
        ts.start()
        settings = moto_settings(moto_url, run_dir, worker_concurrency=args.concurrency, log_level="WARNING",
                                 **ts.settings_overrides())
        resources.ensure_resources(settings)
        data.configure(settings)
        from workers import logs
        logs.configure(settings)
        small, large = photo_jpeg((640, 480)), photo_jpeg((4000, 3000))
        print(f"# Worker pipeline benchmark ({os.cpu_count()} cores; moto server, TorchServe 1 worker)\n")

        print("## Per-stage cost, one image at a time (median ms)\n")
        print("| image | " + " | ".join(STAGES) + " | decode+render | total |")
        print("|---" * (len(STAGES) + 3) + "|")
        for label, body in (("0.3 MP JPEG (640x480)", small), ("12 MP JPEG (4000x3000)", large)):
            cost = stage_costs(settings, body, args.samples)
            print(f"| {label} | " + " | ".join(ms(cost[s]).strip() for s in STAGES)
                  + f" | {ms(cost['decode'] + cost['render']).strip()} | {ms(sum(cost.values())).strip()} |")

        from workers import render
        sent = render.classifier_input(small, render.decode(small, width=1000, classifier_short_side=584,
                                                            max_pixels=90_000_000), 584)
        model_ips = model_throughput(settings, sent, args.concurrency, max(100, args.burst))
        log = (run_dir / "worker.log").open("wb")
        metrics_port = free_port()
        worker = subprocess.Popen([str(BIN / "udagram"), "worker", "--metrics-port", str(metrics_port)],
                                  env=worker_env(settings), stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        wait_done([_warm(settings, small)], 120)
        counter = WorkerCounter(metrics_port)
        burst_ids = [new_image(settings) for _ in range(args.burst)]
        groups = {"worker": worker.pid, "TorchServe": ts.pid, "moto server": moto.pid}
        cpu_before = {name: group_cpu_seconds(pid) for name, pid in groups.items()}
        bench_cpu = time.process_time()
        burst_ips = burst(settings, small, burst_ids, counter)
        cpu = {name: group_cpu_seconds(pid) - cpu_before[name] for name, pid in groups.items()}
        cpu["this benchmark (uploads, polling)"] = time.process_time() - bench_cpu
        latencies = idle_latency(settings, small, max(10, args.samples * 2), counter)
        p50 = statistics.median(latencies)
        p95 = sorted(latencies)[int(0.95 * (len(latencies) - 1))]
        print("\n## Throughput (0.3 MP JPEGs)\n")
        print("| what | images/s |\n|---|---|")
        print(f"| TorchServe alone, {args.concurrency} clients, direct predictions | {model_ips:.1f} |")
        print(f"| burst of {args.burst} uploads -> DONE through `udagram worker` | {burst_ips:.1f} |")
        print(f"\nburst / model server = {burst_ips / model_ips:.2f} (goal >= 0.8)")
        print("\nCPU per image during the burst (ms of CPU time, all processes share the cores):\n")
        print("| process | CPU ms / image |\n|---|---|")
        for name, seconds in cpu.items():
            print(f"| {name} | {seconds * 1000 / args.burst:.1f} |")
        total = sum(cpu.values())
        print(f"| all | {total * 1000 / args.burst:.1f} |")
        print(f"\nWith every process on the same {os.cpu_count()} cores, the burst cannot beat "
              f"{os.cpu_count() / total * args.burst:.1f} images/s (CPU-bound ceiling); TorchServe's share of "
              f"the CPU per image is {cpu['TorchServe'] / total:.2f}.")
        print(f"\n## Idle latency, upload -> DONE ({len(latencies)} sequential uploads)\n")
        print(f"p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms (goal p50 <= 500 ms)")
    finally:
        if worker and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
        ts.stop()
        os.killpg(moto.pid, signal.SIGTERM)
        moto.wait(10)


def _warm(settings: Settings, body: bytes) -> str:
    image_id = new_image(settings)
    put_original(client("s3", settings), settings, image_id, body)
    return image_id


if __name__ == "__main__":
    main()
