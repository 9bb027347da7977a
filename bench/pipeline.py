"""End to end on the real local stack: upload -> DONE latency, a burst through the API, the model
server's own throughput, and the worker's per-stage costs.

    .venv/bin/python bench/pipeline.py [--samples 20] [--burst 200]

Starts the whole local stack (tests/fixtures/stack.py `running_stack`: every process of
`udagram up`, on free ports, in a temp dir, stopped at the end with nothing left behind) with the
default archive, and uploads as the web page does: GraphQL `createImage`, then the presigned POST
of the file to S3. Measured, in this order:

1. model server alone: `POST /predictions/classifier` straight to the stack's TorchServe, of the
   bytes the worker sends (downscaled JPEG), from as many concurrent clients as the worker keeps
   in flight (`worker_concurrency`);
2. idle, sequential: one upload at a time of a 0.3 MP photo, then of a 12 MP photo; latency =
   from the presigned POST's response to the record's DONE. DONE is detected by polling the
   record (DynamoDB GetItem, strongly consistent) every `--poll-ms`; the record's own
   `status_changed_at` (written by the worker in the DONE update, same clock) gives the exact
   moment, and both are reported. Per-stage costs: the worker's own stage histogram
   (`udagram_worker_stage_seconds` on its /metrics), summed over these uploads (means).
3. burst: `--burst` uploads through the API from 8 client threads; completion time from the first
   createImage to the last DONE, images/s, ratio to (1.); detection by polling the pending
   records (BatchGetItem) every `--burst-poll-ms`. CPU time per image of every stack process
   during the burst (from /proc) shows where the cores go.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.serving import percentile  # noqa: E402
from handlers.archive import DEFAULT_VERSION, archive_path, ensure_default_archive  # noqa: E402
from tests.fixtures.stack import LocalStack, running_stack  # noqa: E402
from udagram import data  # noqa: E402
from udagram.settings import Settings  # noqa: E402
from udagram.stack import control  # noqa: E402

STAGES = ("lease", "download", "decode", "predict", "render", "upload", "update", "index")
Say = Callable[[str], None]

# The web page's own operations (graphql_api/static/js/queries.js).
IMAGE_FIELDS = """id groupId owner caption title status imageUrl processedImageUrl
    predictions { label probability } modelVersion error createdAt processedAt"""
GROUP_FIELDS = "id name description owner createdAt imageCount"
CREATE_GROUP = f"""mutation CreateGroup($name: String!, $description: String!) {{
  createGroup(input: {{ name: $name, description: $description }}) {{
    __typename ... on Group {{ {GROUP_FIELDS} }} ... on Error {{ code message }} }} }}"""
CREATE_IMAGE = f"""mutation CreateImage($groupId: ID!, $caption: String!, $fileName: String,
    $contentType: String!, $contentLength: Int!) {{
  createImage(input: {{ groupId: $groupId, caption: $caption, fileName: $fileName,
                       contentType: $contentType, contentLength: $contentLength }}) {{
    __typename
    ... on ImageUpload {{ image {{ {IMAGE_FIELDS} }} upload {{ url fields expiresAt }} }}
    ... on Error {{ code message }} }} }}"""


def photo_jpeg(size: tuple[int, int], name: str = "chelsea") -> bytes:
    import skimage.data
    from PIL import Image

    img = Image.fromarray(getattr(skimage.data, name)()).resize(size, Image.Resampling.BICUBIC)
    out = io.BytesIO()
    img.save(out, "JPEG", quality=92)
    return out.getvalue()


def percentiles_ms(seconds: list[float]) -> dict[str, float]:
    """n, p50, p95 (nearest rank, as bench/serving.py) and max, in ms; empty input gives zeros."""
    if not seconds:
        return {"n": 0, "p50": 0.0, "p95": 0.0, "max": 0.0}
    return {"n": len(seconds), "p50": percentile(seconds, 0.5), "p95": percentile(seconds, 0.95),
            "max": max(seconds) * 1000}


class Api:
    """The API as the web page uses it: GraphQL over HTTP with a bearer token, presigned POSTs."""

    def __init__(self, stack: LocalStack, user: str = "bench", connections: int = 16) -> None:
        self.url = f"{stack.api_url}/graphql"
        self.metrics_url = f"http://{stack.settings.api_metrics_host}:{stack.settings.api_metrics_port}/metrics"
        self.headers = {"Authorization": f"Bearer {stack.token(user)}"}
        self.http = httpx.Client(timeout=60, limits=httpx.Limits(max_connections=connections))

    def gql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        response = self.http.post(self.url, json={"query": query, "variables": variables or {}}, headers=self.headers)
        response.raise_for_status()
        body = response.json()
        if body.get("errors"):
            raise RuntimeError(f"GraphQL errors: {body['errors']}")
        return body["data"]

    def create_group(self, name: str) -> str:
        group = self.gql(CREATE_GROUP, {"name": name, "description": "bench"})["createGroup"]
        if group["__typename"] != "Group":
            raise RuntimeError(f"createGroup refused: {group}")
        return group["id"]

    def create_image(self, group_id: str, body: bytes, name: str = "photo.jpg") -> dict[str, Any]:
        """createImage for a JPEG `body`: {"image": {...}, "upload": {"url", "fields", ...}}."""
        variables = {"groupId": group_id, "caption": name, "fileName": name, "contentType": "image/jpeg",
                     "contentLength": len(body)}
        created = self.gql(CREATE_IMAGE, variables)["createImage"]
        if created["__typename"] != "ImageUpload":
            raise RuntimeError(f"createImage refused: {created}")
        return created

    def post(self, upload: dict[str, Any], body: bytes, name: str = "photo.jpg") -> httpx.Response:
        """The presigned POST of `body`, as the web page sends it."""
        return self.http.post(upload["url"], data=upload["fields"], files={"file": (name, body, "image/jpeg")})

    def upload(self, group_id: str, body: bytes, name: str = "photo.jpg") -> tuple[str, float, float]:
        """createImage + presigned POST; returns (image id, wall-clock and perf_counter time at
        the POST's response)."""
        created = self.create_image(group_id, body, name)
        response = self.post(created["upload"], body, name)
        done_wall, done_perf = time.time(), time.perf_counter()
        if response.status_code not in (200, 201, 204):
            raise RuntimeError(f"presigned POST answered {response.status_code}: {response.text[:300]}")
        return created["image"]["id"], done_wall, done_perf

    def close(self) -> None:
        self.http.close()


def done_at(record: data.ImageModel) -> float:
    """Wall-clock time of the worker's DONE update (the record's status_changed_at)."""
    return datetime.fromisoformat(str(record.status_changed_at)).timestamp()


def check_done(record: data.ImageModel) -> bool:
    if record.status == data.ImageStatus.FAILED.value:
        raise RuntimeError(f"image {record.id} FAILED: {record.error}")
    return record.status == data.ImageStatus.DONE.value


# --- worker metrics ----------------------------------------------------------------------------


def scrape(url: str) -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value}."""
    from prometheus_client.parser import text_string_to_metric_families

    values: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(url, timeout=10).text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}"] = sample.value
    return values


def stage_means(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Mean seconds per stage between two scrapes of the worker's stage histogram."""
    means = {}
    for stage in STAGES:
        key = f"{{stage={stage}}}"
        total = after.get(f"udagram_worker_stage_seconds_sum{key}", 0) - before.get(
            f"udagram_worker_stage_seconds_sum{key}", 0)
        count = after.get(f"udagram_worker_stage_seconds_count{key}", 0) - before.get(
            f"udagram_worker_stage_seconds_count{key}", 0)
        means[stage] = total / count if count else 0.0
    return means


def worker_metrics_url(settings: Settings) -> str:
    return f"http://{settings.host}:{settings.worker_metrics_port}/metrics"


# --- CPU per process ---------------------------------------------------------------------------


def tree_cpu_seconds(root: int) -> float:
    """CPU time (user + system) of a process and its live descendants, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in {root, *control.process_tree(root)}:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        total += int(fields[11]) + int(fields[12])
    return total / tick


def stack_cpu(settings: Settings) -> dict[str, float]:
    return {p.name: tree_cpu_seconds(p.pid) for p in control.status(settings) or [] if p.pid}


# --- 1. the model server alone -----------------------------------------------------------------


def worker_payload(settings: Settings, body: bytes) -> bytes:
    """The bytes the worker sends TorchServe for this upload (workers/processor.py's calls)."""
    from workers import render

    decoded = render.decode(body, width=settings.processed_width,
                            classifier_short_side=settings.classifier_input_short_side,
                            max_pixels=settings.max_image_pixels)
    return render.classifier_input(body, decoded, settings.classifier_input_short_side)


def model_server_throughput(settings: Settings, body: bytes, clients: int, seconds: float) -> dict[str, float]:
    url = f"{settings.torchserve_inference_url}/predictions/{settings.model_name}"
    headers = {"Content-Type": "application/octet-stream"}
    latencies: list[float] = []
    lock = threading.Lock()
    with httpx.Client(timeout=60, limits=httpx.Limits(max_connections=clients)) as http:
        def one() -> None:
            t0 = time.perf_counter()
            http.post(url, content=body, headers=headers).raise_for_status()
            with lock:
                latencies.append(time.perf_counter() - t0)

        def client(deadline: float) -> int:
            n = 0
            while time.perf_counter() < deadline:
                one()
                n += 1
            return n

        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(lambda _: one(), range(clients * 2)))  # warm-up
            latencies.clear()
            start = time.perf_counter()
            total = sum(pool.map(client, [start + seconds] * clients))
            elapsed = time.perf_counter() - start
    return {"clients": clients, "images": total, "seconds": elapsed, "images_per_second": total / elapsed,
            **{f"{k}_ms": v for k, v in percentiles_ms(latencies).items() if k != "n"}}


# --- 2. idle, sequential -----------------------------------------------------------------------


def wait_one_done(image_id: str, poll: float, timeout: float = 120) -> tuple[float, data.ImageModel]:
    """Poll the record until DONE; returns the perf_counter time it was first seen DONE."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = data.ImageModel.get(image_id, consistent_read=True)
        if check_done(record):
            return time.perf_counter(), record
        time.sleep(poll)
    raise RuntimeError(f"image {image_id} not DONE after {timeout:.0f} s")


def sequential(stack: LocalStack, api: Api, group_id: str, body: bytes, samples: int, poll: float,
               say: Say, label: str) -> dict[str, Any]:
    metrics_url = worker_metrics_url(stack.settings)
    before = scrape(metrics_url)
    observed, exact = [], []
    for n in range(samples):
        image_id, up_wall, up_perf = api.upload(group_id, body)
        seen, record = wait_one_done(image_id, poll)
        observed.append(seen - up_perf)
        exact.append(done_at(record) - up_wall)
        if (n + 1) % 5 == 0 or n + 1 == samples:
            say(f"  {label}: {n + 1}/{samples}, last {observed[-1] * 1000:.0f} ms")
        time.sleep(0.2)  # idle between uploads
    after = scrape(metrics_url)
    return {
        "label": label, "bytes": len(body), "poll_ms": poll * 1000,
        "observed_ms": [x * 1000 for x in observed], "exact_ms": [x * 1000 for x in exact],
        "observed": percentiles_ms(observed),
        "exact": percentiles_ms(exact),
        "stage_ms": {k: v * 1000 for k, v in stage_means(before, after).items()},
    }


# --- 3. burst ----------------------------------------------------------------------------------


def burst(stack: LocalStack, api: Api, group_id: str, body: bytes, count: int, poll: float,
          progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    cpu_before = stack_cpu(stack.settings)
    own_cpu_before = time.process_time()
    uploaded: dict[str, tuple[float, float]] = {}
    lock = threading.Lock()
    start_wall, start = time.time(), time.perf_counter()

    def one(n: int) -> None:
        image_id, up_wall, up_perf = api.upload(group_id, body, f"burst-{n}.jpg")
        with lock:
            uploaded[image_id] = (up_wall, up_perf)

    seen: dict[str, float] = {}
    records: dict[str, data.ImageModel] = {}
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(one, n) for n in range(count)]
        deadline = time.monotonic() + 900
        while len(seen) < count and time.monotonic() < deadline:
            for future in [f for f in futures if f.done()]:
                future.result()  # an upload that failed fails the bench
            with lock:
                pending = [i for i in uploaded if i not in seen]
            for record in data.ImageModel.batch_get(pending, consistent_read=True):  # pages of 100 inside
                if check_done(record):
                    seen[record.id] = time.perf_counter()
                    records[record.id] = record
            if progress:
                progress(len(seen), len(uploaded))
            time.sleep(poll)
    if len(seen) < count:
        raise RuntimeError(f"burst: only {len(seen)} of {count} images DONE after 900 s")
    uploads_done = max(p for _, p in uploaded.values())
    end = max(seen.values())
    cpu_after = stack_cpu(stack.settings)
    own_cpu = time.process_time() - own_cpu_before
    exact = [done_at(records[i]) - uploaded[i][0] for i in uploaded]
    observed = [seen[i] - uploaded[i][1] for i in uploaded]
    last_exact = max(done_at(r) for r in records.values()) - start_wall
    return {
        "images": count, "poll_ms": poll * 1000,
        "upload_phase_s": uploads_done - start,
        "completion_s_observed": end - start, "completion_s": last_exact,
        "images_per_second": count / last_exact,
        "latency_observed": percentiles_ms(observed),
        "latency_exact": percentiles_ms(exact),
        "latency_exact_ms": [x * 1000 for x in exact],
        "cpu_ms_per_image": {name: (cpu_after.get(name, 0) - cpu_before.get(name, 0)) * 1000 / count
                             for name in cpu_after},
        "bench_cpu_ms_per_image": own_cpu * 1000 / count,  # the clients: createImage + POST, polling
    }


# --- the whole run -----------------------------------------------------------------------------


@contextmanager
def bench_stack(say: Say) -> Iterator[LocalStack]:
    """The real local stack in a temp dir, with the default archive in a temp model store."""
    with tempfile.TemporaryDirectory(prefix="udagram-bench-stack-") as tmp:
        store = Path(tmp) / "model-store"
        cached = ensure_default_archive(Settings(model_store=ROOT / "bench" / ".cache" / "model-store"))
        store.mkdir()
        try:
            os.link(cached, archive_path(store, DEFAULT_VERSION))  # no copy of 25 MB
        except OSError:  # another file system
            shutil.copy(cached, archive_path(store, DEFAULT_VERSION))
        say("starting the local stack (TorchServe, API, worker, S3, SQS, DynamoDB) on free ports ...")
        started = time.perf_counter()
        with running_stack(Path(tmp) / "data", store, UDAGRAM_WORKER_RECONCILE_ON_START="false") as stack:
            say(f"stack ready in {time.perf_counter() - started:.0f} s")
            data.configure(stack.settings)
            yield stack
            say("stopping the local stack ...")


def run(stack: LocalStack, samples: int, large_samples: int, burst_count: int, model_seconds: float,
        poll_ms: float, burst_poll_ms: float, say: Say = print,
        progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    settings = stack.settings
    api = Api(stack)
    try:
        small, large = photo_jpeg((640, 480)), photo_jpeg((4000, 3000))
        group_id = api.create_group("bench uploads")
        say("warming the pipeline (one upload) ...")
        wait_one_done(api.upload(group_id, small)[0], 0.05, timeout=300)
        clients = settings.worker_concurrency
        say(f"model server alone: {clients} clients, {model_seconds:.0f} s ...")
        model = model_server_throughput(settings, worker_payload(settings, small), clients, model_seconds)
        say(f"  {model['images_per_second']:.1f} img/s")
        say(f"idle stack, {samples} sequential uploads (0.3 MP) ...")
        idle = sequential(stack, api, group_id, small, samples, poll_ms / 1000, say, "0.3 MP")
        say(f"idle stack, {large_samples} sequential uploads (12 MP) ...")
        idle_large = sequential(stack, api, group_id, large, large_samples, poll_ms / 1000, say, "12 MP")
        say(f"burst: {burst_count} uploads through the API ...")
        burst_group = api.create_group("bench burst")
        result = burst(stack, api, burst_group, small, burst_count, burst_poll_ms / 1000, progress)
        say(f"  {result['images_per_second']:.1f} img/s, done in {result['completion_s']:.1f} s")
        return {
            "worker_concurrency": clients,
            "model_server": model,
            "idle": idle,
            "idle_12mp": idle_large,
            "burst": result,
            "burst_group_id": burst_group,
            "burst_over_model_server": result["images_per_second"] / model["images_per_second"],
        }
    finally:
        api.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=20, help="sequential 0.3 MP uploads")
    parser.add_argument("--large-samples", type=int, default=5, help="sequential 12 MP uploads")
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--model-seconds", type=float, default=10)
    parser.add_argument("--poll-ms", type=float, default=10)
    parser.add_argument("--burst-poll-ms", type=float, default=1000)
    args = parser.parse_args()
    import json

    with bench_stack(print) as stack:
        result = run(stack, args.samples, args.large_samples, args.burst, args.model_seconds, args.poll_ms,
                     args.burst_poll_ms)
    for key in ("idle", "idle_12mp"):
        result[key].pop("observed_ms"), result[key].pop("exact_ms")
    result["burst"].pop("latency_exact_ms")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
