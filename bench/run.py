"""`make bench`: every benchmark in one run, side by side, then bench/report/ (README.md, PNGs, JSON).

    .venv/bin/python bench/run.py [--quick] [--out bench/report]

1. serving (bench/serving.py): the raw model at the server's layout vs TorchServe per runtime
   (ONNX Runtime, TorchScript) vs the previous default vs naive, 1-16 clients;
2. the real local stack (bench/pipeline.py): model server alone, idle upload -> DONE, a burst of
   200 uploads through the API;
3. on the same stack, API page queries (bench/api.py);
4. the report (bench/report.py).
About 15 minutes on 2 cores (`--quick`: about 6). Everything it starts runs on free loopback
ports in temp dirs and is stopped at the end, on failure and on Ctrl-C / SIGTERM too.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: E402

FULL = {"seconds": 8.0, "rounds": 3, "samples": 30, "large_samples": 10, "burst": 200, "model_seconds": 15.0,
        "api_seconds": 10.0, "poll_ms": 10.0, "burst_poll_ms": 1000.0}
QUICK = {**FULL, "seconds": 2.0, "rounds": 1, "samples": 5, "large_samples": 2, "burst": 30, "model_seconds": 3.0,
         "api_seconds": 2.0}


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds through every context manager: servers stop


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few samples (for development)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "report")
    parser.add_argument("--skip", nargs="*", default=[], choices=["serving", "stack"], help="parts to leave out")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _interrupt)
    settings = QUICK if args.quick else FULL
    console = Console()

    from bench import api as api_bench, pipeline, report, serving

    results: dict = {"quick": args.quick, "args": settings, "machine": report.machine(),
                     "load_start": os.getloadavg()[0]}
    started = time.perf_counter()
    steps = [s for s in ("serving", "stack") if s not in args.skip]
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        say = progress.console.log
        overall = progress.add_task("make bench", total=("serving" in steps) + 3 * ("stack" in steps) + 1)
        if "serving" in steps:
            say("[bold]1. serving[/]: raw at the server's layout vs TorchServe per runtime vs previous default "
                "vs naive")
            results["serving"] = serving.summary(serving.run(settings["seconds"], settings["rounds"], say))
            progress.advance(overall)
        if "stack" in steps:
            with pipeline.bench_stack(say) as stack:
                progress.advance(overall)
                say("[bold]2. end to end[/] on the local stack")
                burst_task = progress.add_task("burst: DONE / uploaded", total=settings["burst"], visible=False)

                def burst_progress(done: int, uploaded: int) -> None:
                    progress.update(burst_task, completed=done, visible=True,
                                    description=f"burst: DONE (uploaded {uploaded})")

                results["pipeline"] = pipeline.run(
                    stack, settings["samples"], settings["large_samples"], settings["burst"],
                    settings["model_seconds"], settings["poll_ms"], settings["burst_poll_ms"], say, burst_progress)
                progress.remove_task(burst_task)
                progress.advance(overall)
                say("[bold]3. API page queries[/] on the same stack")
                results["api"] = api_bench.run(stack, settings["api_seconds"], say)
                progress.advance(overall)
        results["load_end"] = os.getloadavg()[0]
        results["duration_s"] = time.perf_counter() - started
        say("[bold]4. report[/]")
        readme = report.write(results, args.out)
        progress.advance(overall)
    console.print(f"written {readme.relative_to(ROOT) if readme.is_relative_to(ROOT) else readme} "
                  f"in {results['duration_s'] / 60:.1f} min")
    console.print(report.why(results))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted: every server the benchmark started has been stopped", file=sys.stderr)
        sys.exit(130)
