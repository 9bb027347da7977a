"""bench/report/: README.md (the summary), PNG plots and results.json, from one run's results.

    .venv/bin/python bench/report.py [bench/report/results.json]   # re-render from saved JSON
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
REPORT_DIR = ROOT / "bench" / "report"

# Serving goals (issues 2 and 12) are judged by bench/serving.py and arrive in its summary.
SERVED_CONFIGS = ("served-onnx", "served-torchscript", "naive")
GOALS = {  # issue 4
    "burst_over_model_server": 0.8,
    "idle_p50_ms": 500.0,
    "decode_render_12mp_ms": 150.0,
}


# --- machine -----------------------------------------------------------------------------------


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                if line.startswith("model name")), platform.processor() or "unknown")
    mem_kb = next((int(line.split()[1]) for line in _read("/proc/meminfo").splitlines()
                   if line.startswith("MemTotal:")), 0)
    os_name = next((line.split("=", 1)[1].strip().strip('"') for line in _read("/etc/os-release").splitlines()
                    if line.startswith("PRETTY_NAME=")), platform.system())

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    import torch

    return {
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "ram_gib": round(mem_kb / 1024 / 1024, 1),
        "os": f"{os_name} ({platform.release()})",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "git_commit": git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


# --- plots -------------------------------------------------------------------------------------


def _best_samples(serving: dict[str, Any], config: str, clients: int | None = None) -> list[float]:
    rounds = [r for r in serving["rounds"] if r["config"] == config and clients in (None, r["clients"])]
    return max(rounds, key=lambda r: r["images_per_second"])["latencies_ms"] if rounds else []


def _raw_config(config: str) -> str | None:
    """The raw baseline a served configuration compares with: the same runtime at the same layout."""
    if config.startswith("served-"):
        return "raw-" + config.removeprefix("served-")
    return "raw-torchscript" if config == "previous" else None


def _serving_names(serving: dict[str, Any]) -> dict[str, str]:
    return {r["config"]: r["name"] for r in serving["table"]}


def _cdf(ax: Any, samples: list[float], label: str, **style: Any) -> None:
    if not samples:
        return
    ordered = sorted(samples)
    n = len(ordered)
    ax.step(ordered, [(i + 1) / n for i in range(n)], where="post", label=f"{label} (n={n})", **style)


def _cdf_axes(ax: Any, xlabel: str, ylabel: str, title: str | None = None, legend_size: int = 7) -> None:
    """The styling shared by every latency CDF: log x axis, labels, grid, legend."""
    if title:
        ax.set_title(title)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)


def plots(results: dict[str, Any], out: Path) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[tuple[str, str]] = []
    serving, pipeline, api = results.get("serving"), results.get("pipeline"), results.get("api")

    if serving:
        best = {(r["config"], r["clients"]): r for r in serving["table"]}
        names = _serving_names(serving)
        counts = sorted({c for (config, c) in best if config in SERVED_CONFIGS})
        colours = {"served-onnx": "tab:blue", "served-torchscript": "tab:orange", "naive": "tab:grey"}
        fig, ax = plt.subplots(figsize=(10.5, 4.5))
        for config, marker in zip(SERVED_CONFIGS, "o^s", strict=True):
            xs = [c for c in counts if (config, c) in best]
            if xs:
                ax.plot(xs, [best[(config, c)]["images_per_second"] for c in xs], marker=marker,
                        color=colours[config], label=names[config])
            raw = next((r for (c, _), r in best.items() if c == _raw_config(config)), None)
            if raw:
                ax.axhline(raw["images_per_second"], linestyle="--", color=colours[config], alpha=0.7,
                           label=raw["name"])
        previous = best.get(("previous", 8))
        if previous:
            ax.plot([8], [previous["images_per_second"]], "X", markersize=10, color="tab:red", label=previous["name"])
        if pipeline:
            model = pipeline["model_server"]
            ax.plot([model["clients"]], [model["images_per_second"]], "D", color="tab:green",
                    label="stack's TorchServe alone (worker's payload)")
            ax.plot([model["clients"]], [pipeline["burst"]["images_per_second"]], "*", markersize=12,
                    color="tab:purple", label="burst end to end (upload -> DONE)")
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel("images/s")
        ax.set_xticks(counts)
        ax.set_ylim(bottom=0)
        ax.set_title("Throughput vs concurrency")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "throughput.png", dpi=110)
        plt.close(fig)
        written.append(("throughput.png", "Throughput vs concurrency: TorchServe per runtime vs naive vs raw "
                                          "at the server's layout"))

        panels = [config for config in SERVED_CONFIGS if config in names]
        fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), sharex=True, squeeze=False)
        for ax, config in zip(axes[0], panels, strict=True):
            for clients in counts:
                _cdf(ax, _best_samples(serving, config, clients), f"{clients} clients")
            raw_config = _raw_config(config)
            if raw_config in names:
                _cdf(ax, _best_samples(serving, raw_config), "raw, per image", color="grey", linestyle="--")
            _cdf_axes(ax, "latency per request (ms, log)", "fraction of requests", names[config])
        fig.suptitle("Serving latency distribution (CDF, best round)")
        fig.tight_layout()
        fig.savefig(out / "serving_latency.png", dpi=110)
        plt.close(fig)
        written.append(("serving_latency.png", "Serving latency CDFs per concurrency"))

    if pipeline:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        _cdf(ax, pipeline["idle"]["exact_ms"], "idle, 0.3 MP, sequential")
        _cdf(ax, pipeline["idle_12mp"]["exact_ms"], "idle, 12 MP, sequential")
        _cdf(ax, pipeline["burst"]["latency_exact_ms"], f"burst of {pipeline['burst']['images']}")
        ax.axvline(GOALS["idle_p50_ms"], color="grey", linestyle=":", label="idle p50 goal (500 ms)")
        _cdf_axes(ax, "upload completed -> record DONE (ms, log)", "fraction of uploads",
                  "End-to-end latency on the local stack (CDF)", legend_size=8)
        fig.tight_layout()
        fig.savefig(out / "e2e_latency.png", dpi=110)
        plt.close(fig)
        written.append(("e2e_latency.png", "End-to-end latency: idle sequential uploads and the burst"))

    if api:
        fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
        for row in api["load"]:
            _cdf(ax, row["latencies_ms"], f"{row['query']}, {row['clients']} client(s)")
        _cdf_axes(ax, "latency per query (ms, log)", "fraction of queries", "API page queries (first: 20)")
        queries = sorted({c["query"] for c in api["calls"]})
        sizes = sorted({c["first"] for c in api["calls"]})
        width = 0.8 / len(queries)
        for i, query in enumerate(queries):
            values = [next(c["dynamodb_calls"] for c in api["calls"] if c["query"] == query and c["first"] == s)
                      for s in sizes]
            bx.bar([j + i * width for j in range(len(sizes))], values, width, label=query)
        bx.set_xticks([j + width * (len(queries) - 1) / 2 for j in range(len(sizes))], [f"first: {s}" for s in sizes])
        bx.set_ylabel("DynamoDB calls per query")
        bx.set_title("DynamoDB calls per page query")
        bx.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "api.png", dpi=110)
        plt.close(fig)
        written.append(("api.png", "API latency CDFs and DynamoDB calls per page size"))
    return written


# --- markdown ----------------------------------------------------------------------------------


def _goal(value: float | None, goal: float, higher_is_better: bool = True) -> str:
    if value is None:
        return "not measured"
    met = value >= goal if higher_is_better else value <= goal
    return "**met**" if met else "**missed**"


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(results: dict[str, Any], figures: list[tuple[str, str]]) -> str:
    m = results["machine"]
    serving, pipeline, api = results.get("serving"), results.get("pipeline"), results.get("api")
    lines = [
        "# Benchmarks",
        "",
        f"Written by `make bench` (`bench/run.py{' --quick' if results.get('quick') else ''}`) in "
        f"{results['duration_s'] / 60:.1f} min; raw figures and every latency sample in "
        "[results.json](results.json). Everything ran in one run, side by side, on this machine:",
        "",
        "| machine | |",
        "|---|---|",
        f"| CPU | {m['cpu']} ({m['cores']} cores, {m['usable_cores']} usable) |",
        f"| RAM | {m['ram_gib']} GiB |",
        f"| OS | {m['os']} |",
        f"| software | Python {m['python']}, torch {m['torch']} |",
        f"| git commit | {m['git_commit']}{' (with uncommitted changes)' if m['git_dirty'] else ''} |",
        f"| date | {m['date']} |",
        f"| load average (1 min) at start / end | {_f(results['load_start'], 2)} / {_f(results['load_end'], 2)} |",
        "",
    ]
    if results.get("quick"):
        lines += ["**Quick run (`--quick`): few samples, figures are indicative only.**", ""]
    lines += ["## Goals (issues 2, 4 and 12)", "",
              "Serving figures compare each configuration's best round; the same from the medians over rounds "
              "follows in brackets.", "", "| goal | measured | |", "|---|---|---|"]
    ratios = serving["ratios"] if serving else {}
    idle_p50 = pipeline["idle"]["exact"]["p50"] if pipeline else None
    stage12 = pipeline["idle_12mp"]["stage_ms"] if pipeline else None
    decode_render = stage12["decode"] + stage12["render"] if stage12 else None
    burst_ratio = pipeline["burst_over_model_server"] if pipeline else None
    for goal in serving["goals"] if serving else []:
        digits = 0 if goal["unit"] else 2
        unit = goal["unit"] if goal["value"] is not None else ""
        lines.append(f"| {goal['goal']} | {_f(goal['value'], digits)}{unit}"
                     f" ({_f(goal['median'], digits)}) | "
                     f"{_goal(goal['value'], goal['target'], goal['higher_is_better'])} |")
    lines += [
        f"| burst >= 0.8 x the model server's own throughput | {_f(burst_ratio, 2)} | "
        f"{_goal(burst_ratio, GOALS['burst_over_model_server'])} |",
        f"| idle upload -> DONE p50 <= 500 ms | {_f(idle_p50, 0)} ms | "
        f"{_goal(idle_p50, GOALS['idle_p50_ms'], higher_is_better=False)} |",
        f"| 12 MP decode + render <= 150 ms | {_f(decode_render, 0)} ms | "
        f"{_goal(decode_render, GOALS['decode_render_12mp_ms'], higher_is_better=False)} |",
    ]
    if api:
        lines.append(f"| DynamoDB calls per page query constant as the page grows | "
                     f"{', '.join(sorted({str(round(c['dynamodb_calls'], 2)) for c in api['calls']}))} | "
                     f"{'**met**' if api['calls_constant'] else '**missed**'} |")
    lines += ["", why(results), ""]

    if serving:
        names = _serving_names(serving)
        default = f"served-{serving['default_runtime']}"
        lines += [
            "## Serving", "",
            f"Every configuration classifies the 13 reference photos (`handlers/reference_photos/`) in turn. "
            f"**Raw** = the archive's model loaded as the handler loads it, in {serving['layout']} (TorchServe's "
            "layout: one single-threaded worker per core), each process doing JPEG decode + preprocess + "
            "forward + top 5 at batch 1, all at once, with the workers' environment; its 'clients' are the "
            "processes. **TorchServe onnx / torchscript** = the archive of that runtime (ONNX Runtime; the "
            "TorchScript trace frozen and optimised at load), batches of 2, the workers' environment of "
            f"`handlers/server.py` (passive OpenMP, glibc malloc keeping its memory) and its logging "
            "(`handlers/log4j2.xml`, asynchronous, no line per prediction); "
            f"{names.get(default, default)} is what `udagram model build` makes by default. **Previous "
            "default** = the TorchScript archive with the workers' environment, TorchServe's logging and the "
            "frontend's JVM options before issue 12 (glibc's default malloc; access, debug and metric lines "
            "for every prediction, written synchronously; the full C2 JIT), i.e. the default archive as "
            "served before. **Naive** = TorchServe's "
            "eager mode (model file + state_dict), batch 1, no model config (1 worker), torch's default "
            "threads, TorchServe's default environment and logging, the full JIT "
            "(spinning OpenMP, which makes it erratic "
            "when the client threads or other jobs want the same cores); same image pre/post-processing "
            "([bench/naive](../naive)). Page faults and CPU ms = minor faults and "
            "CPU time (user + system) of the processes running the model (TorchServe's workers, or the raw "
            "processes) over the measured window, per image (the Java frontend's and the client threads' too); CPU "
            "time per image hardly depends on other load, throughput does. The clients are the standard "
            "library's HTTP client on kept-alive connections (the lightest load generator at hand). "
            "All servers and raw processes start first, then the configurations take "
            f"turns: {results['args']['rounds']} round(s) of {results['args']['seconds']:g} s each; best "
            "round shown, median over rounds in brackets. The benchmark's client threads run on the same "
            "cores as the server; the raw processes have the cores to themselves.",
            "",
            "| configuration | clients | images/s | x raw (same runtime) | p50 ms | p95 ms | page faults / image "
            "| CPU ms / image | frontend CPU ms / image | client CPU ms / image | errors |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        raw_rate = {r["config"]: r["images_per_second"] for r in serving["table"] if r["config"].startswith("raw-")}
        for r in serving["table"]:
            raw = raw_rate.get(_raw_config(r["config"]) or "")
            lines.append(f"| {r['name']} | {r['clients']} | {r['images_per_second']:.1f} "
                         f"({r['median_images_per_second']:.1f}) "
                         f"| {_f(r['images_per_second'] / raw if raw else None, 2)} "
                         f"| {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {_f(r.get('faults_per_image'), 0)} "
                         f"| {_f(r.get('cpu_ms_per_image'))} | {_f(r.get('frontend_cpu_ms_per_image'))} "
                         f"| {_f(r.get('client_cpu_ms_per_image'))} | {r['errors']} |")
        lines += ["", "| ratio (best rounds; medians in brackets) | value |", "|---|---|"]
        medians = serving.get("median_ratios", {})
        for name, value in ratios.items():
            lines.append(f"| {name.replace('_', ' ')} | {_f(value, 2)} ({_f(medians.get(name), 2)}) |")
        lines.append("")

    if pipeline:
        idle, large, burst = pipeline["idle"], pipeline["idle_12mp"], pipeline["burst"]
        model = pipeline["model_server"]
        lines += [
            "## End to end (the real local stack)", "",
            "The whole stack of `udagram up` (TorchServe with the default archive, API, worker, SeaweedFS S3, "
            "moto SQS, dynalite DynamoDB, the S3 event bridge) on free ports in a temp dir. Uploads go as "
            "the web page sends them: GraphQL `createImage`, then the presigned POST to S3. Latency = from "
            "the POST's response to the record's DONE. **Detection:** the record is polled (DynamoDB "
            f"GetItem, strongly consistent) every {idle['poll_ms']:.0f} ms when idle and every "
            f"{burst['poll_ms']:.0f} ms (BatchGetItem of the pending records) during the burst; "
            "\"exact\" uses the record's `status_changed_at`, which the worker writes in the DONE update "
            "(same machine clock), \"polled\" is when the poll saw it (resolution: the poll interval plus "
            "one DynamoDB call).",
            "",
            "| upload -> DONE | n | p50 ms | p95 ms | max ms | polled p50 / p95 / max ms |",
            "|---|---|---|---|---|---|",
        ]
        for label, row, obs in (("idle, sequential, 0.3 MP JPEG", idle["exact"], idle["observed"]),
                                ("idle, sequential, 12 MP JPEG", large["exact"], large["observed"]),
                                (f"burst of {burst['images']} (0.3 MP)", burst["latency_exact"],
                                 burst["latency_observed"])):
            lines.append(f"| {label} | {row['n']} | {row['p50']:.0f} | {row['p95']:.0f} | {row['max']:.0f} | "
                         f"{obs['p50']:.0f} / {obs['p95']:.0f} / {obs['max']:.0f} |")
        lines += [
            "",
            f"| burst of {burst['images']} uploads through the API (8 client threads) | |",
            "|---|---|",
            f"| uploads (createImage + POST) finished after | {burst['upload_phase_s']:.1f} s |",
            f"| first createImage -> last DONE | {burst['completion_s']:.1f} s "
            f"(polled: {burst['completion_s_observed']:.1f} s) |",
            f"| end-to-end throughput | **{burst['images_per_second']:.1f} images/s** |",
            f"| the stack's TorchServe alone ({model['clients']} clients = `worker_concurrency`, the worker's "
            f"downscaled payload, {model['seconds']:.0f} s) | {model['images_per_second']:.1f} images/s "
            f"(p50 {model['p50_ms']:.0f} ms) |",
            f"| ratio burst / model server | **{pipeline['burst_over_model_server']:.2f}** |",
            "",
            "CPU time per image during the burst, per stack process (with its children; from /proc):",
            "",
            "| process | CPU ms / image |", "|---|---|",
        ]
        cpu = burst["cpu_ms_per_image"]
        for name, value in sorted(cpu.items(), key=lambda kv: -kv[1]):
            lines.append(f"| {name} | {value:.1f} |")
        total = sum(cpu.values())
        own = burst.get("bench_cpu_ms_per_image", 0.0)
        lines += [f"| all stack processes | {total:.1f} |",
                  f"| this benchmark's own process (the clients: createImage + POST, polling) | {own:.1f} |",
                  f"| CPU-bound ceiling on {results['machine']['usable_cores']} cores: cores / CPU per image | "
                  f"{results['machine']['usable_cores'] * 1000 / (total + own):.1f} images/s |", ""]
        lines += [
            "Worker stage costs (means from the worker's `udagram_worker_stage_seconds` histogram over the "
            "sequential uploads, ms):", "",
            "| image | " + " | ".join(idle["stage_ms"]) + " | decode + render |",
            "|---" * (len(idle["stage_ms"]) + 2) + "|",
        ]
        for label, row in (("0.3 MP JPEG (640x480)", idle["stage_ms"]), ("12 MP JPEG (4000x3000)", large["stage_ms"])):
            lines.append(f"| {label} | " + " | ".join(f"{v:.1f}" for v in row.values())
                         + f" | {row['decode'] + row['render']:.1f} |")
        lines.append("")

    if api:
        lines += [
            "## API page queries", "",
            "The web page's `groups` and `group(id) { images }` queries over HTTP to the stack's API "
            "(one uvicorn process). DynamoDB calls are read from the API process's own counter "
            "(`udagram_dynamodb_calls_total` on its `/metrics`, incremented by PynamoDB's pre-send "
            "signal; retries not counted), before and after 5 queries of each page size.", "",
            "| query | page size (first) | items returned | DynamoDB calls per query |", "|---|---|---|---|",
        ]
        for c in api["calls"]:
            lines.append(f"| {c['query']} | {c['first']} | {c['items']} | {c['dynamodb_calls']:g} |")
        lines += ["", "| query (first: 20) | clients | requests/s | p50 ms | p95 ms | errors |",
                  "|---|---|---|---|---|---|"]
        for row in api["load"]:
            lines.append(f"| {row['query']} | {row['clients']} | {row['requests_per_second']:.1f} | "
                         f"{row['p50_ms']:.0f} | {row['p95_ms']:.0f} | {row['errors']} |")
        lines.append("")

    lines += ["## Plots", ""]
    for file, caption in figures:
        lines += [f"### {caption}", "", f"![{caption}]({file})", ""]
    lines += [
        "## How to run", "",
        "`make bench` (about 15 min on 2 cores; `make bench BENCH_ARGS=--quick` for a short check, about 6). "
        "Every server runs on free loopback ports in a temp dir and is stopped at the end, also on "
        "Ctrl-C or failure. The parts: `bench/serving.py`, `bench/pipeline.py`, `bench/api.py` "
        "(each runnable alone); `bench/report.py results.json` re-renders this page.",
        "",
    ]
    return "\n".join(lines)


def why(results: dict[str, Any]) -> str:
    """Short reasons for missed goals, from this run's own measurements."""
    serving, pipeline = results.get("serving"), results.get("pipeline")
    cores = results["machine"]["usable_cores"]
    notes = []
    load = max(results.get("load_start") or 0.0, results.get("load_end") or 0.0)
    if load > cores:
        notes.append(f"- The machine was shared during this run (load average up to {load:.1f} on {cores} cores): "
                     "configurations measured at different moments saw different background load, so the "
                     "ratios below are noisy; regenerate on a quiet machine before quoting them.")
    for goal in serving["goals"] if serving else []:
        if goal["met"] is False:
            notes.append(f"- {goal['goal']}: measured {_f(goal['value'], 0 if goal['unit'] else 2)}{goal['unit']}. "
                         + _serving_reason(goal, serving, cores))
    if pipeline:
        ratio = pipeline["burst_over_model_server"]
        cpu = pipeline["burst"]["cpu_ms_per_image"]
        total = sum(cpu.values())
        own = pipeline["burst"].get("bench_cpu_ms_per_image", 0.0)
        if ratio < GOALS["burst_over_model_server"] and total:
            ts = cpu.get("torchserve", 0.0)
            others = ", ".join(f"{k} {v:.0f}" for k, v in sorted(cpu.items(), key=lambda kv: -kv[1])
                               if k != "torchserve")
            notes.append(
                f"- burst / model server = {ratio:.2f}: during the burst the stack spent {total:.0f} ms of CPU per "
                f"image, of which TorchServe {ts:.0f} ms ({ts / total:.0%}); the rest ({others} ms) goes to the "
                f"worker, the API and the local stand-ins for S3, SQS and DynamoDB, which share the same {cores} "
                f"cores, with the benchmark's own clients ({own:.0f} ms). That caps the burst at about "
                f"{cores * 1000 / (total + own):.1f} images/s (CPU-bound ceiling; the rest of the gap is other "
                "load on the machine), whereas TorchServe alone gets every core. On AWS (S3/SQS/DynamoDB off "
                "the machine) or with "
                "the worker on other cores the ratio rises; see docs/worker.md.")
        if pipeline["idle"]["exact"]["p50"] > GOALS["idle_p50_ms"]:
            notes.append("- idle p50 above 500 ms: see the stage costs below for where the time goes.")
    missed = [n for n in notes if not n.startswith("- The machine was shared")]
    if not missed:
        return "\n".join(["Every goal was met in this run.", *notes])
    return "\n".join(["Why the missed goals were missed:", *notes])


def _serving_reason(goal: dict[str, Any], serving: dict[str, Any], cores: int) -> str:
    """Why a serving goal was missed, in this run's own terms."""
    at8 = {r["config"]: r for r in serving["table"] if r["clients"] == 8}
    raws = {r["config"]: r for r in serving["table"] if r["config"].startswith("raw-")}
    if "raw" in goal["goal"]:
        runtime = goal["ratio"].removesuffix("_served8_over_raw")
        served = at8.get(f"served-{runtime}", {})
        raw = raws.get(_raw_config(f"served-{runtime}") or "", {})
        return (f"On {cores} cores the benchmark's client threads and TorchServe's Java frontend share the cores "
                "with the model workers, whereas the raw processes have them to themselves; other jobs on the "
                "machine take from the served side most (see the load average). CPU ms per image at 8 clients: "
                f"model workers {_f(served.get('cpu_ms_per_image'))} (raw processes "
                f"{_f(raw.get('cpu_ms_per_image'))}), Java frontend {_f(served.get('frontend_cpu_ms_per_image'))}, "
                f"client threads {_f(served.get('client_cpu_ms_per_image'))}.")
    if "p50" in goal["goal"]:
        needed = 8 / (goal["target"] / 1000)
        raw = raws.get(_raw_config(f"served-{serving['default_runtime']}") or "", {}).get("images_per_second")
        return ("With 8 clients always waiting, p50 is about 8 / throughput (Little's law): it follows the "
                f"throughput of the default archive. {goal['target']:.0f} ms needs about {needed:.0f} images/s "
                f"served; the same model in-process, with the cores to itself, did {_f(raw)}.")
    faults = {config: r.get("faults_per_image") for config, r in at8.items()}
    return ("Throughput ratios between configurations measured in turns move with the background load; "
            f"page faults per image at 8 clients: {', '.join(f'{k} {_f(v, 0)}' for k, v in faults.items())}.")


def write(results: dict[str, Any], out: Path = REPORT_DIR) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    figures = plots(results, out)
    readme = out / "README.md"
    readme.write_text(markdown(results, figures))
    return readme


def main() -> None:
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else REPORT_DIR / "results.json"
    results = json.loads(source.read_text())
    print(f"written {write(results, source.parent)}")


if __name__ == "__main__":
    main()
