"""Serving speed, side by side in one run: the raw model at the server's layout vs TorchServe per
runtime vs the previous default vs a naive TorchServe.

    .venv/bin/python bench/serving.py [--seconds 8] [--rounds 3]

(a) raw: per runtime (ONNX Runtime, TorchScript frozen + optimised), the archive's model loaded
    exactly as the handler loads it, in as many processes and threads as TorchServe runs workers
    (the archive's model-config.yaml and model_meta.json: one single-threaded worker per core),
    each doing decode + preprocess + forward + top 5 at batch 1, all at the same time; with the
    environment the served workers get (handlers/server.py WORKER_ENV);
(b) TorchServe per runtime (batching from the archive) at 1, 4, 8 and 16 concurrent clients;
(c) the previous default (issue 12's "today"): the TorchScript archive served with the workers'
    environment before the allocator settings (glibc's default malloc behaviour), TorchServe's
    own logging (synchronous, lines for every prediction) and the JVM's full JIT, at 8 clients;
(d) naive baseline (bench/naive): TorchServe's eager mode (model file + state_dict), batch 1,
    the worker count of config.properties (1), torch's default threads, TorchServe's default
    environment, logging and JIT, at the same client counts.

Everything sends the 13 reference photos (handlers/reference_photos), each client and raw
process cycling through them from its own offset. For every configuration the minor page faults
and the CPU time of the processes that run the model (TorchServe's workers, or the raw processes)
are counted over the measured window, per image, and so is the CPU time of TorchServe's Java
frontend and of this benchmark's client threads.

Every TorchServe instance runs on free loopback ports in its own temp dir; all of them and the
raw processes are started once, then the configurations take turns in rounds (`--rounds`), so
they all see the same background load; each reports its best round and the median over rounds.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from bench.naive import build_naive_archive  # noqa: E402
from handlers.archive import MODEL_CONFIG_FILE, MODEL_FILES, archive_info, build_archive, reference_photos  # noqa: E402
from handlers.image_classifier import META_FILE, RUNTIMES  # noqa: E402
from handlers.server import (  # noqa: E402
    LOG_CONFIG,
    REPO_CONFIG,
    WORKER_ENV,
    Endpoints,
    TorchServeProcess,
    read_properties,
    torchserve_env,
)
from tests.fixtures.ports import free_port  # noqa: E402
from tests.fixtures.torchserve import parent_pid, process_usage, worker_pids  # noqa: E402
from udagram.model_management import ManagementError  # noqa: E402

CLIENTS = (1, 4, 8, 16)
# The model workers' environment before issue 12: passive OpenMP, glibc's default malloc.
PREVIOUS_WORKER_ENV: dict[str, str | None] = {
    **{key: None for key in WORKER_ENV},
    "OMP_WAIT_POLICY": "PASSIVE",
}
TORCHSERVE_DEFAULT_ENV: dict[str, str | None] = {key: None for key in WORKER_ENV}
# The frontend's settings before issue 12: synchronous logging, the JVM's full (C2) JIT.
PREVIOUS_FRONTEND = {
    "async_logging": "false",
    "vmargs": read_properties(REPO_CONFIG)["vmargs"].replace("-XX:TieredStopAtLevel=1", "").strip(),
}
PROTOCOL = "RAW "  # prefix of the raw processes' lines on stdout (torch and ts print there too)
GOALS = {  # issues 2 and 12
    "served8_over_raw": 0.9,
    "default8_over_previous8": 1.8,
    "default_p50_8_ms": 120.0,
    "default8_over_naive8": 1.5,
}


@dataclass
class Result:
    config: str  # raw-onnx, served-onnx, raw-torchscript, served-torchscript, previous, naive
    name: str
    clients: int  # concurrent clients; for raw: processes running at once
    images: int
    seconds: float
    p50_ms: float
    p95_ms: float
    errors: int = 0
    faults_per_image: float | None = None  # minor page faults of the model processes
    cpu_ms_per_image: float | None = None  # CPU time of the model processes (robust to other load)
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    frontend_cpu_ms_per_image: float | None = None  # TorchServe's Java frontend
    client_cpu_ms_per_image: float | None = None  # this benchmark's client threads

    @property
    def per_second(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] * 1000


def summarise(config: str, name: str, clients: int, latencies: list[float], seconds: float, errors: int = 0,
              usage: tuple[int, float] | None = None) -> Result:
    """usage: (minor page faults, CPU seconds) the model processes spent on these images."""
    faults, cpu = (None, None) if usage is None or not latencies else (
        usage[0] / len(latencies), usage[1] * 1000 / len(latencies))
    return Result(config, name, clients, len(latencies), seconds, percentile(latencies, 0.5),
                  percentile(latencies, 0.95), errors, faults, cpu, [round(x * 1000, 2) for x in latencies])


def _usage(pids: list[int]) -> tuple[int, float]:
    counters = [process_usage(pid) for pid in pids]
    return sum(c[0] for c in counters), sum(c[1] for c in counters)


# --- (a) raw, in as many processes as the server runs workers -----------------------------------


def raw_worker(model_dir: Path, offset: int) -> None:
    """One raw process (`serving.py --raw-worker DIR --offset N`): loads the model as the handler
    does, then per `go SECONDS` line on stdin runs the photos for that long and answers a JSON line."""
    import torch

    from handlers.image_classifier import ImageClassifier, Preprocessing, image_to_input, load_runner, worker_threads

    meta = json.loads((model_dir / META_FILE).read_text())
    ImageClassifier._set_threads(worker_threads(meta))  # the handler's own thread setting
    runner = load_runner(str(model_dir / MODEL_FILES[meta["runtime"]]), meta)
    prep = Preprocessing.from_meta(meta)
    photos = [body for _, body in reference_photos()]

    def classify(body: bytes) -> list[int]:
        probabilities = torch.softmax(runner(image_to_input(body, prep).unsqueeze(0)).float(), dim=1)
        return torch.topk(probabilities, 5, dim=1).indices[0].tolist()

    with torch.inference_mode():
        for body in photos * 2:  # warm-up, as the handler's (JIT profiling runs)
            classify(body)
        print(PROTOCOL + "ready", flush=True)
        for line in sys.stdin:
            seconds = float(line.split()[1])
            latencies: list[float] = []
            before = resource.getrusage(resource.RUSAGE_SELF)
            started = time.perf_counter()
            deadline = started + seconds
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                classify(photos[(offset + len(latencies)) % len(photos)])
                latencies.append(time.perf_counter() - t0)
            elapsed = time.perf_counter() - started
            after = resource.getrusage(resource.RUSAGE_SELF)
            print(PROTOCOL + json.dumps({
                "latencies": latencies, "seconds": elapsed, "faults": after.ru_minflt - before.ru_minflt,
                "cpu": after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime,
            }), flush=True)


def _protocol_line(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith(PROTOCOL):
            return line[len(PROTOCOL) :].strip()
    raise RuntimeError(f"raw process {process.pid} exited (code {process.wait()})")


class RawProcesses:
    """`count` raw processes for one archive, loaded once, measured together on demand."""

    def __init__(self, config: str, name: str, archive: Path, work: Path, count: int) -> None:
        self.config, self.name, self.count = config, name, count
        model_dir = work / f"{config}-model"
        with zipfile.ZipFile(archive) as mar:
            meta = json.loads(mar.read(META_FILE))
            mar.extract(META_FILE, model_dir)
            mar.extract(MODEL_FILES[meta["runtime"]], model_dir)
        # The served workers' environment (WORKER_ENV, unless the operator set those variables).
        env = torchserve_env(work / f"{config}-env")
        self.processes = [
            subprocess.Popen(
                [sys.executable, __file__, "--raw-worker", str(model_dir), "--offset", str(i)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
            )
            for i in range(count)
        ]
        try:
            for process in self.processes:
                if _protocol_line(process) != "ready":
                    raise RuntimeError(f"raw process {process.pid} did not get ready")
        except BaseException:
            self.stop()
            raise

    def measure(self, seconds: float) -> Result:
        for process in self.processes:  # released together; each runs for `seconds`
            assert process.stdin is not None
            process.stdin.write(f"go {seconds}\n")
            process.stdin.flush()
        answers = [json.loads(_protocol_line(p)) for p in self.processes]
        latencies = [x for a in answers for x in a["latencies"]]
        return summarise(self.config, self.name, self.count, latencies, max(a["seconds"] for a in answers),
                         usage=(sum(a["faults"] for a in answers), sum(a["cpu"] for a in answers)))

    def stop(self) -> None:
        for process in self.processes:
            if process.stdin:
                process.stdin.close()  # EOF: the process leaves its loop and exits
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# --- (b)-(d) TorchServe -----------------------------------------------------------------------


def run_clients(server: TorchServeProcess, photos: list[bytes], clients: int, seconds: float, config: str,
                name: str) -> Result:
    address = urlsplit(server.inference_url)
    headers = {"Content-Type": "application/octet-stream"}
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    start = threading.Barrier(clients + 1)
    deadline = [float("inf")]  # set for real right after everyone is connected

    def client(index: int) -> None:
        # The standard library's client on one kept-alive connection: the load generator shares
        # the 2 cores with the server, and httpx cost 4 CPU ms per request against 1 for this.
        connection = http.client.HTTPConnection(address.hostname or "", address.port, timeout=120)

        def post(body: bytes) -> int:
            connection.request("POST", "/predictions/classifier", body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            return response.status

        try:
            post(photos[index % len(photos)])  # connect + warm
            start.wait()
            sent = 0
            while time.perf_counter() < deadline[0]:
                body = photos[(index + sent) % len(photos)]
                sent += 1
                t0 = time.perf_counter()
                if post(body) == 200:
                    latencies[index].append(time.perf_counter() - t0)
                else:
                    errors[index] += 1
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    pids = worker_pids(server.management_url)
    frontend = parent_pid(pids[0])
    start.wait()
    before, frontend_before, client_before = _usage(pids), process_usage(frontend)[1], _own_cpu()
    started = time.perf_counter()
    deadline[0] = started + seconds
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    client_cpu = _own_cpu() - client_before
    usage: tuple[int, float] | None = None
    frontend_cpu: float | None = None
    try:
        if worker_pids(server.management_url) == pids:  # a replaced worker would make the counts meaningless
            after = _usage(pids)
            usage = (after[0] - before[0], after[1] - before[1])
            frontend_cpu = process_usage(frontend)[1] - frontend_before
    except (OSError, ManagementError):
        pass
    result = summarise(config, name, clients, [x for per in latencies for x in per], elapsed, sum(errors), usage)
    if result.images:
        result.client_cpu_ms_per_image = client_cpu * 1000 / result.images
        if frontend_cpu is not None:
            result.frontend_cpu_ms_per_image = frontend_cpu * 1000 / result.images
    return result


def _own_cpu() -> float:
    """CPU seconds of this process (the client threads; the raw processes are children, not counted)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


@dataclass(frozen=True)
class Served:
    config: str
    name: str
    archive: Path
    worker_env: dict[str, str | None] | None  # None: WORKER_ENV (handlers/server.py)
    clients: tuple[int, ...]
    # The frontend as before issue 12: TorchServe's own logging (synchronous, lines for every
    # prediction) and the JVM's full JIT (config.properties' vmargs without TieredStopAtLevel=1).
    previous_frontend: bool = False


def serve(store: Path, served: Served, work: Path) -> TorchServeProcess:
    endpoints = Endpoints("127.0.0.1", *(free_port() for _ in range(5)))
    previous = served.previous_frontend
    instance = TorchServeProcess(endpoints, store, work / served.config, {"classifier": served.archive.name},
                                 worker_env=served.worker_env,
                                 log_config=None if previous else LOG_CONFIG,
                                 config_overrides=PREVIOUS_FRONTEND if previous else None)
    return instance.start(timeout=300)


def layout(archive: Path) -> tuple[int, int]:
    """(workers, threads per worker) TorchServe runs this archive with."""
    with zipfile.ZipFile(archive) as mar:
        config = yaml.safe_load(mar.read(MODEL_CONFIG_FILE))
        meta = json.loads(mar.read(META_FILE))
    threads = int(meta.get("threads", 0)) or len(os.sched_getaffinity(0))
    return int(config["minWorkers"]), threads


@dataclass
class Measurements:
    results: list[Result]
    default_runtime: str  # what `udagram model build` chose for the default archive
    layout: str  # TorchServe's workers x threads, which the raw processes copy


def run(seconds: float, rounds: int, say: Callable[[str], None] = print,
        clients: tuple[int, ...] = CLIENTS) -> Measurements:
    """Every configuration, side by side; all of them take turns in each round."""
    photos = [body for _, body in reference_photos()]
    results: list[Result] = []

    def record(result: Result) -> None:
        results.append(result)
        faults, cpu = (("-", "-") if result.faults_per_image is None or result.cpu_ms_per_image is None
                       else (f"{result.faults_per_image:.0f}", f"{result.cpu_ms_per_image:.0f}"))
        frontend = "" if result.frontend_cpu_ms_per_image is None else (
            f" (frontend {result.frontend_cpu_ms_per_image:.1f}, clients {result.client_cpu_ms_per_image:.1f})")
        say(f"  {result.name} @{result.clients}: {result.per_second:.1f} img/s, p50 {result.p50_ms:.0f} ms, "
            f"{faults} page faults and {cpu} CPU ms per image{frontend}")

    with tempfile.TemporaryDirectory(prefix="udagram-bench-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        store = work / "store"
        say("building archives: the default (runtime chosen by the build), each other runtime, naive ...")
        default = build_archive(store, version="1.0")
        default_runtime = archive_info(default)["meta"]["runtime"]
        archives = {default_runtime: default}
        for runtime in RUNTIMES:
            if runtime not in archives:
                archives[runtime] = build_archive(store, version=runtime, runtime=runtime)  # type: ignore[arg-type]
        naive = build_naive_archive(store)
        workers, threads = layout(default)
        shape = f"{workers} processes x {threads} thread{'s' if threads > 1 else ''}"

        raws: list[RawProcesses] = []
        for runtime in RUNTIMES:
            say(f"starting raw {runtime}: {shape} ...")
            raw = RawProcesses(f"raw-{runtime}", f"raw {runtime} ({shape})",
                               archives[runtime], work, workers)
            stack.callback(raw.stop)
            raws.append(raw)
        configurations = [
            Served(f"served-{runtime}",
                   f"TorchServe {runtime}" + (" (default archive)" if runtime == default_runtime else ""),
                   archives[runtime], None, clients)
            for runtime in RUNTIMES
        ] + [
            Served("previous", "TorchServe previous default (torchscript, glibc malloc defaults, TorchServe's logging)",
                   archives["torchscript"], PREVIOUS_WORKER_ENV, tuple(c for c in clients if c == 8) or clients[-1:],
                   previous_frontend=True),
            Served("naive", "TorchServe naive", naive, TORCHSERVE_DEFAULT_ENV, clients, previous_frontend=True),
        ]
        servers: list[tuple[Served, TorchServeProcess]] = []
        for served in configurations:
            say(f"starting {served.name} ...")
            server = serve(store, served, work)
            stack.callback(server.stop)
            servers.append((served, server))

        for round_number in range(rounds):
            say(f"round {round_number + 1}/{rounds}")
            for raw in raws:
                record(raw.measure(seconds))
            for served, server in servers:
                for count in served.clients:
                    record(run_clients(server, photos, count, seconds, served.config, served.name))
    return Measurements(results, default_runtime, shape)


def best_rounds(results: list[Result]) -> list[tuple[Result, float]]:
    """Per configuration: its best round, and the median throughput over rounds."""
    groups: dict[tuple[str, int], list[Result]] = {}
    for result in results:
        groups.setdefault((result.config, result.clients), []).append(result)
    return [
        (max(group, key=lambda r: r.per_second), statistics.median(r.per_second for r in group))
        for group in groups.values()
    ]


def summary(measured: Measurements) -> dict[str, Any]:
    """Best round per configuration, the ratios and goals (issues 2 and 12), every round's samples."""
    rows = []
    best: dict[tuple[str, int], Result] = {}
    medians: dict[tuple[str, int], float] = {}
    p50_medians: dict[tuple[str, int], float] = {}
    for r, median in best_rounds(measured.results):
        best[(r.config, r.clients)] = r
        medians[(r.config, r.clients)] = median
        p50_medians[(r.config, r.clients)] = statistics.median(
            x.p50_ms for x in measured.results if (x.config, x.clients) == (r.config, r.clients))
        row = {k: v for k, v in asdict(r).items() if k != "latencies_ms"}
        rows.append(row | {"images_per_second": r.per_second, "median_images_per_second": median})

    def key(config: str, clients: int | None = None) -> tuple[str, int] | None:
        found = [k for k in best if k[0] == config and (clients is None or k[1] == clients)]
        return found[0] if found else None

    def ratio(a: tuple[str, int] | None, b: tuple[str, int] | None) -> tuple[float | None, float | None]:
        if a is None or b is None or not best[b].per_second or not medians[b]:
            return None, None
        return best[a].per_second / best[b].per_second, medians[a] / medians[b]

    default = f"served-{measured.default_runtime}"
    ratios = {
        **{f"{runtime}_served8_over_raw": ratio(key(f"served-{runtime}", 8), key(f"raw-{runtime}"))
           for runtime in RUNTIMES},
        "previous8_over_raw_torchscript": ratio(key("previous", 8), key("raw-torchscript")),
        "default8_over_previous8": ratio(key(default, 8), key("previous", 8)),
        "default8_over_naive8": ratio(key(default, 8), key("naive", 8)),
        "raw_onnx_over_raw_torchscript": ratio(key("raw-onnx"), key("raw-torchscript")),
    }
    default8 = key(default, 8)
    goals = [
        *({"goal": f"served@8 >= 0.9 x raw, {runtime} ({measured.layout})", "target": GOALS["served8_over_raw"],
           "ratio": f"{runtime}_served8_over_raw"} for runtime in RUNTIMES),
        {"goal": "default archive served@8 >= 1.8 x previous default@8", "target": GOALS["default8_over_previous8"],
         "ratio": "default8_over_previous8"},
        {"goal": "default archive served@8 >= 1.5 x naive@8", "target": GOALS["default8_over_naive8"],
         "ratio": "default8_over_naive8"},
    ]
    for goal in goals:
        goal["value"], goal["median"] = ratios[goal["ratio"]]
        goal["higher_is_better"], goal["unit"] = True, ""
    goals.append({"goal": "default archive p50 at 8 clients <= 120 ms", "target": GOALS["default_p50_8_ms"],
                  "value": best[default8].p50_ms if default8 else None,
                  "median": p50_medians.get(default8) if default8 else None, "higher_is_better": False, "unit": " ms"})
    for goal in goals:
        value = goal["value"]
        goal["met"] = None if value is None else (
            value >= goal["target"] if goal["higher_is_better"] else value <= goal["target"])
    return {
        "default_runtime": measured.default_runtime,
        "layout": measured.layout,
        "table": rows,
        "ratios": {name: pair[0] for name, pair in ratios.items()},
        "median_ratios": {name: pair[1] for name, pair in ratios.items()},
        "goals": goals,
        "rounds": [asdict(r) | {"images_per_second": r.per_second} for r in measured.results],
    }


def report(result: dict[str, Any], json_path: Path) -> None:
    print()
    print(f"{'configuration':<66} {'clients':>7} {'img/s':>7} {'median':>7} {'p50 ms':>7} {'p95 ms':>7} "
          f"{'faults/img':>10} {'CPU ms/img':>10} {'errors':>6}")
    for r in result["table"]:
        faults = "-" if r["faults_per_image"] is None else f"{r['faults_per_image']:.0f}"
        cpu = "-" if r["cpu_ms_per_image"] is None else f"{r['cpu_ms_per_image']:.1f}"
        print(f"{r['name']:<66} {r['clients']:>7} {r['images_per_second']:>7.1f} {r['median_images_per_second']:>7.1f} "
              f"{r['p50_ms']:>7.1f} {r['p95_ms']:>7.1f} {faults:>10} {cpu:>10} {r['errors']:>6}")
    print("(best round; median: img/s over rounds; raw: clients = processes; faults and CPU: of the processes "
          "running the model)\n")
    for goal in result["goals"]:
        value = "-" if goal["value"] is None else f"{goal['value']:.2f}{goal['unit']}"
        median = "-" if goal["median"] is None else f"{goal['median']:.2f}{goal['unit']}"
        state = {True: "met", False: "MISSED", None: "not measured"}[goal["met"]]
        print(f"{goal['goal']:<66} {value:>10} (median {median}) {state}")
    print(f"cores: {len(os.sched_getaffinity(0))}, load average now: {os.getloadavg()[0]:.2f} (shared machine: noisy)")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result | {"load_average": os.getloadavg()}, indent=2))
    print(f"written {json_path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="measuring time per configuration and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of turns (the machine may be shared)")
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "serving.json")
    parser.add_argument("--raw-worker", type=Path, help=argparse.SUPPRESS)  # internal: one raw process
    parser.add_argument("--offset", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.raw_worker:
        raw_worker(args.raw_worker, args.offset)
        return
    report(summary(run(args.seconds, args.rounds)), args.json)


if __name__ == "__main__":
    main()
