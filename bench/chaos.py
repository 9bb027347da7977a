"""Chaos run: kill -9 each part of the real local stack in turn, mid-burst, and prove nothing is lost.

    .venv/bin/python bench/chaos.py [--short] [--uploads N] [--workers N] [--api-processes N]
                                    [--report bench/report]   (make chaos)

Starts the whole local stack (tests/fixtures/stack.py: the code of `udagram up`, on free loopback
ports, in a temp dir), creates a group, then for each fault in turn:

1. starts a burst of uploads as the web page makes them (GraphQL createImage + presigned POST to
   S3), from concurrent clients that retry what fails (as a person pressing "retry" would);
2. once a third of them are uploaded, kills the target with SIGKILL: the worker, one TorchServe
   model worker process, the whole TorchServe (frontend and workers), the queue server (moto SQS,
   in memory: its queues and messages are gone), the S3 server (SeaweedFS), the DynamoDB server
   (dynalite). supervisord restarts it, as it would in a deployment;
3. waits until the target is healthy again and every image in flight at the kill is DONE or FAILED.

At the end every uploaded image must be DONE or FAILED with a reason, none lost or stuck, one
processed object per DONE image and none other, no image finished (the workers' "image done") more
than once, and the DLQ is listed with its reasons, and how often reconciliation re-queued images. The table
(fault, images in flight, recovered, lost, time back, time to recover) is printed and written to
`<report>/chaos.md` and `chaos.json`. Exit status 1 when any check fails.

`--short` (CI: tests/e2e/test_chaos.py) uses fewer uploads and short worker timings (visibility
timeout, reconciliation interval) so each recovery takes seconds; the full run keeps the product's
default timings, so its recovery times are what a deployment would see. `--workers 2` (and
`--api-processes 2`) run the stack with several of each (docs/local-stack.md): the worker fault then
kills one of them while the other keeps working; tests/e2e/test_scale.py runs the short faults that way.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.pipeline import Api, photo_jpeg  # noqa: E402
from bench.report import machine  # noqa: E402
from handlers.archive import DEFAULT_VERSION, build_archive  # noqa: E402
from tests.fixtures.stack import LocalStack, running_stack  # noqa: E402
from udagram import data  # noqa: E402
from udagram.aws import client  # noqa: E402
from udagram.stack import control, supervisor  # noqa: E402

# Short timings for --short: every recovery path then takes seconds instead of a minute.
SHORT_TIMINGS = {
    "UDAGRAM_WORKER_VISIBILITY_TIMEOUT_SECONDS": "10",
    "UDAGRAM_WORKER_RECONCILE_INTERVAL_SECONDS": "5",
    "UDAGRAM_WORKER_STALE_UPLOAD_SECONDS": "5",
    "UDAGRAM_WORKER_STALE_PROCESSING_SECONDS": "20",
    "UDAGRAM_WORKER_RETRY_BASE_SECONDS": "1",
    "UDAGRAM_WORKER_RETRY_MAX_SECONDS": "8",
}
SHORT_RECOVER_TIMEOUT = 180.0
FINAL = {"DONE", "FAILED"}


def say(text: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {text}", flush=True)


# ---- killing --------------------------------------------------------------------------------------

def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def program_pid(stack: LocalStack, name: str) -> int:
    info = supervisor.rpc(supervisor.paths(stack.settings)).supervisor.getProcessInfo(name)
    if info["statename"] != "RUNNING" or not info["pid"]:
        raise RuntimeError(f"{name} is not running: {info['statename']}")
    return int(info["pid"])


def kill_program(role: str) -> Callable[[LocalStack], list[int]]:
    """The (first) program of a role: with several workers, one of them."""
    def kill(stack: LocalStack) -> list[int]:
        pid = program_pid(stack, stack.program_names(role)[0])
        os.kill(pid, signal.SIGKILL)
        return [pid]

    return kill


def kill_model_worker(stack: LocalStack) -> list[int]:
    """One of TorchServe's Python model workers (the frontend starts a new one)."""
    tree = control.process_tree(program_pid(stack, "torchserve"))
    workers = sorted(pid for pid in tree if "model_service_worker" in _cmdline(pid))
    if not workers:
        raise RuntimeError("no TorchServe model worker process found")
    os.kill(workers[0], signal.SIGKILL)
    return workers[:1]


def kill_torchserve(stack: LocalStack) -> list[int]:
    """The whole TorchServe: the Java frontend and its model workers, all at once."""
    tree = control.process_tree(program_pid(stack, "torchserve"))
    targets = [pid for pid in tree if "java" in _cmdline(pid) or "model_service_worker" in _cmdline(pid)]
    if not any("java" in _cmdline(pid) for pid in targets):
        raise RuntimeError("no TorchServe frontend (java) found")
    for pid in targets:
        os.kill(pid, signal.SIGKILL)
    return targets


@dataclass(frozen=True)
class Fault:
    name: str
    what: str
    role: str  # the supervisord programs that must be healthy again (all of a role: udagram.stack.programs)
    kill: Callable[[LocalStack], list[int]]


FAULTS = (
    Fault("worker", "the worker process (udagram worker; with several, the first)", "worker", kill_program("worker")),
    Fault("torchserve-worker", "one TorchServe model worker process", "torchserve", kill_model_worker),
    Fault("torchserve", "the whole TorchServe (Java frontend + model workers)", "torchserve", kill_torchserve),
    Fault("sqs", "the queue server (moto SQS, in memory: queues and messages gone)", "sqs", kill_program("sqs")),
    Fault("s3", "the S3 server (SeaweedFS)", "s3", kill_program("s3")),
    Fault("dynamodb", "the DynamoDB server (dynalite)", "dynamodb", kill_program("dynamodb")),
)


# ---- the uploading clients ------------------------------------------------------------------------

@dataclass
class Upload:
    image_id: str | None = None
    uploaded_at: float | None = None  # the presigned POST's success
    create_tries: int = 0
    post_tries: int = 0
    error: str | None = None  # the client gave up (reported; not an image the system lost)


class Uploader:
    """Uploads like the web page (bench/pipeline.py's Api), retrying each failed step for up to
    `patience` seconds: createImage until it answers, then the same presigned POST until S3 takes it."""

    def __init__(self, api: Api, group_id: str, body: bytes, patience: float):
        self.api, self.group_id, self.body, self.patience = api, group_id, body, patience

    def upload(self, n: int) -> Upload:
        result = Upload()
        deadline = time.monotonic() + self.patience
        name = f"chaos-{n}.jpg"
        ticket = None
        while ticket is None:
            result.create_tries += 1
            try:
                ticket = self.api.create_image(self.group_id, self.body, name)
            except (httpx.HTTPError, RuntimeError, ValueError) as exc:
                if time.monotonic() > deadline:
                    result.error = f"createImage: {exc}"
                    return result
                time.sleep(0.5)
        result.image_id = ticket["image"]["id"]
        upload = ticket["upload"]
        while True:
            result.post_tries += 1
            try:
                response = self.api.post(upload, self.body, name)
                if response.status_code in (200, 201, 204):
                    result.uploaded_at = time.time()
                    return result
                if response.status_code < 500:  # a refusal would be a bug here: report it
                    result.error = f"upload refused: HTTP {response.status_code} {response.text[:200]}"
                    return result
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                result.error = "upload: S3 unreachable until the client gave up"
                return result
            time.sleep(0.5)


# ---- watching the records -------------------------------------------------------------------------

def statuses(ids: list[str]) -> dict[str, data.ImageModel]:
    """Current records (strongly consistent); {} while DynamoDB is down."""
    try:  # batch_get sends pages of 100 keys itself
        return {record.id: record for record in data.ImageModel.batch_get(ids, consistent_read=True)}
    except Exception:  # noqa: BLE001 - the DynamoDB server may be the one killed
        return {}


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def stack_healthy(stack: LocalStack, role: str | None = None) -> bool:
    try:
        states = control.status(stack.settings) or []
    except Exception:  # noqa: BLE001
        return False
    wanted = [s for s in states if role is None or s.name in stack.program_names(role)]
    return bool(wanted) and all(s.ok for s in wanted)


@dataclass
class Row:
    fault: str
    what: str
    killed_pids: list[int]
    uploads: int
    in_flight: int  # images uploaded or being uploaded, not yet DONE/FAILED, at the kill
    recovered: int  # of those, DONE or FAILED at the end
    lost: int
    failed: int
    seconds_back: float | None  # kill -> the killed program healthy again
    seconds_to_recover: float | None  # kill -> every image in flight DONE/FAILED
    client_retries: int  # createImage + POST attempts beyond the first, during the outage
    notes: list[str] = field(default_factory=list)


def run_fault(stack: LocalStack, fault: Fault, uploader: Uploader, uploads: int, clients: int,
              recover_timeout: float, all_ids: list[str]) -> tuple[Row, list[Upload]]:
    say(f"{fault.name}: burst of {uploads} uploads, then kill -9 {fault.what}")
    with ThreadPoolExecutor(clients, thread_name_prefix=f"upload-{fault.name}") as pool:
        futures: list[Future[Upload]] = [pool.submit(uploader.upload, n) for n in range(uploads)]
        wait_until(lambda: sum(f.done() for f in futures) >= max(1, uploads // 3), 120, 0.05)
        known = [f.result().image_id for f in futures if f.done() and f.result().image_id]
        now = statuses(all_ids + known)
        pending_before = [i for i in all_ids + known if i not in now or now[i].status not in FINAL]
        killed_at = time.monotonic()
        pids = fault.kill(stack)
        say(f"{fault.name}: killed {pids}; {len(pending_before)} images in flight")
        back = None
        if wait_until(lambda: stack_healthy(stack, fault.role), recover_timeout, 0.5):
            back = time.monotonic() - killed_at
            say(f"{fault.name}: {fault.role} healthy again after {back:.1f} s")
        results = [f.result() for f in futures]
    # Images the clients were still creating at the kill were in flight too.
    burst_ids = [r.image_id for r in results if r.image_id]
    in_flight = list(dict.fromkeys(pending_before + [i for i in burst_ids if i not in known]))
    uploaded = [r.image_id for r in results if r.uploaded_at]
    all_ids.extend(burst_ids)

    def settled() -> bool:
        current = statuses(in_flight + uploaded)
        return len(current) == len(set(in_flight + uploaded)) and all(r.status in FINAL for r in current.values())

    recovered_in = None
    if wait_until(settled, recover_timeout, 0.5):
        recovered_in = time.monotonic() - killed_at
    final = statuses(in_flight)
    watched = [i for i in in_flight if i in uploaded or i in known]  # images whose bytes reached S3
    recovered = sum(1 for i in watched if i in final and final[i].status in FINAL)
    row = Row(
        fault=fault.name, what=fault.what, killed_pids=pids, uploads=uploads, in_flight=len(watched),
        recovered=recovered, lost=len(watched) - recovered,
        failed=sum(1 for i in watched if i in final and final[i].status == "FAILED"),
        seconds_back=round(back, 1) if back is not None else None,
        seconds_to_recover=round(recovered_in, 1) if recovered_in is not None else None,
        client_retries=sum(r.create_tries - 1 + max(0, r.post_tries - 1) for r in results),
    )
    gave_up = [r for r in results if r.error]
    if gave_up:
        row.notes.append(f"{len(gave_up)} clients gave up: " + "; ".join(sorted({r.error for r in gave_up})))
    say(f"{fault.name}: in flight {row.in_flight}, recovered {row.recovered}, lost {row.lost}, "
        f"recovered in {row.seconds_to_recover} s")
    if not stack_healthy(stack):
        wait_until(lambda: stack_healthy(stack), recover_timeout, 1.0)
    return row, results


# ---- final checks ---------------------------------------------------------------------------------

def dlq_contents(stack: LocalStack) -> list[dict]:
    sqs = client("sqs", stack.settings)
    url = sqs.get_queue_url(QueueName=stack.settings.dead_letter_queue_name)["QueueUrl"]
    seen: dict[str, dict] = {}
    for _ in range(20):
        messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                       VisibilityTimeout=60, MessageAttributeNames=["All"]).get("Messages", [])
        if not messages:
            break
        for m in messages:
            reason = (m.get("MessageAttributes") or {}).get("reason", {}).get("StringValue")
            seen[m["MessageId"]] = {"body": m["Body"][:300],
                                    "reason": reason or "redriven by SQS after maxReceiveCount receives"}
    return list(seen.values())


def processed_keys(stack: LocalStack) -> list[str]:
    s3 = client("s3", stack.settings)
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=stack.settings.processed_bucket):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


def reconciliation(stack: LocalStack) -> dict:
    """What the workers' reconciliation passes re-queued (from their logs, across restarts): with
    several workers each reconciles, so the same image may be queued more than once."""
    requeued, images = 0, set()
    for name in stack.program_names("worker"):
        for event in stack.log_events(name):
            if event.get("event") == "reconciled: re-queued stranded images":
                requeued += int(event.get("requeued", 0))
                images.update(event.get("image_ids", []))
    return {"requeued": requeued, "distinct_images": len(images)}


def final_checks(stack: LocalStack, uploads: list[Upload], earlier_keys: frozenset[str] = frozenset()) -> dict:
    """`earlier_keys`: processed objects that were there before the run (a stack used before)."""
    uploaded = [u.image_id for u in uploads if u.uploaded_at]
    records = statuses(uploaded)
    by_status: dict[str, int] = {}
    for r in records.values():
        by_status[r.status] = by_status.get(r.status, 0) + 1
    stuck = sorted(i for i in uploaded if i not in records or records[i].status not in FINAL)
    failed = {i: records[i].error for i in uploaded if i in records and records[i].status == "FAILED"}
    done = {i for i in uploaded if i in records and records[i].status == "DONE"}
    keys = [key for key in processed_keys(stack) if key not in earlier_keys]
    expected = {data.processed_key(i) for i in done}
    # Records the clients created but never uploaded to (an error answer after the write, retried).
    group_records = list(data.ImageModel.by_group.query(records[uploaded[0]].group_id)) if uploaded else []
    unknown = [r for r in group_records if r.id not in set(uploaded)]
    finished = stack.images_done()
    times_done = sum(finished.values(), Counter())
    return {
        "uploaded": len(uploaded),
        "by_status": by_status,
        "stuck_or_lost": stuck,
        "failed": failed,
        "processed_objects": len(keys),
        "duplicate_or_stray_processed_objects": sorted(set(keys) - expected) + [k for k in keys if keys.count(k) > 1],
        "missing_processed_objects": sorted(expected - set(keys)),
        "records_without_upload": [{"id": r.id, "status": r.status} for r in unknown],
        "client_gave_up": [u.error for u in uploads if u.error],
        "dlq": dlq_contents(stack),
        # the DONE record is written under the worker's lease: two workers never both finish an image
        "finished_more_than_once": {i: times_done[i] for i in uploaded if times_done[i] > 1},
        "finished_by_worker": {name: sum(counts[i] for i in uploaded) for name, counts in finished.items()},
        "reconciliation": reconciliation(stack),
    }


# ---- report --------------------------------------------------------------------------------------

def table(rows: list[Row]) -> str:
    lines = ["| fault | images in flight | recovered | lost | failed | back after | all in flight final after "
             "| client retries |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        back = f"{r.seconds_back} s" if r.seconds_back is not None else "not back"
        rec = f"{r.seconds_to_recover} s" if r.seconds_to_recover is not None else "not recovered"
        lines.append(f"| {r.fault}: {r.what} | {r.in_flight} | {r.recovered} | **{r.lost}** | {r.failed} | {back} | "
                     f"{rec} | {r.client_retries} |")
    return "\n".join(lines)


def machine_line(m: dict) -> str:
    return f"{m['cores']} cores ({m['cpu']}), {m['ram_gib']} GiB RAM, {m['os']}, commit {m['git_commit']}"


def write_report(directory: Path, rows: list[Row], checks: dict, args: argparse.Namespace, env: dict,
                 passed: bool, started: str, seconds: float) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    host = machine()
    timings = {k: v for k, v in env.items() if k in SHORT_TIMINGS} or "the product's defaults"
    dlq = checks["dlq"]
    text = [
        f"# Chaos run ({'short' if args.short else 'full'}): {'PASSED' if passed else 'FAILED'}",
        "",
        f"{started} UTC, {seconds / 60:.1f} min, on {machine_line(host)}.",
        f"Local stack on loopback (SeaweedFS, dynalite, moto SQS, TorchServe, {args.api_processes} API process(es),"
        f" {args.workers} worker(s) under supervisord);"
        f" {args.uploads} uploads per fault from {args.clients} clients (GraphQL createImage + presigned POST,"
        f" 0.3 MP JPEG); worker timings: {timings}.",
        "",
        "Each fault is a SIGKILL in the middle of a burst; supervisord restarts the process. *In flight* = images"
        " uploaded or being uploaded and not yet DONE/FAILED at the kill. *Back after* = kill until the program"
        " passes its health check again; *all in flight final after* = kill until the last of them is DONE or FAILED.",
        "",
        table(rows),
        "",
        "## End state",
        "",
        f"- Uploaded: {checks['uploaded']}; by status: {checks['by_status']}.",
        f"- Lost or stuck (not DONE/FAILED): **{len(checks['stuck_or_lost'])}** {checks['stuck_or_lost'] or ''}",
        f"- FAILED: {len(checks['failed'])}" + "".join(f"\n  - `{i}`: {e}" for i, e in checks["failed"].items()),
        f"- Processed objects: {checks['processed_objects']} for {checks['by_status'].get('DONE', 0)} DONE images;"
        f" duplicates or strays: **{len(checks['duplicate_or_stray_processed_objects'])}**; missing:"
        f" **{len(checks['missing_processed_objects'])}**.",
        f"- Records created but never uploaded to (a client retried createImage after an error answer):"
        f" {len(checks['records_without_upload'])}"
        + "".join(f"\n  - `{r['id']}`: {r['status']}" for r in checks["records_without_upload"]),
        f"- Clients that gave up: {len(checks['client_gave_up'])}"
        + "".join(f"\n  - {e}" for e in checks["client_gave_up"]),
        f"- Finished (the worker's \"image done\") more than once: **{len(checks['finished_more_than_once'])}**"
        f" {checks['finished_more_than_once'] or ''}; by worker: {checks['finished_by_worker']}.",
        f"- Reconciliation re-queued {checks['reconciliation']['requeued']} images"
        f" ({checks['reconciliation']['distinct_images']} distinct; a re-run of an image finished meanwhile is"
        " skipped).",
        f"- Dead-letter queue: {len(dlq)} messages"
        + "".join(f"\n  - reason: {m['reason']}; body: `{m['body'][:120]}`" for m in dlq)
        + ("\n  (the queue server's kill empties the DLQ too: it only holds what arrived after it)" if dlq else ""),
    ]
    notes = [f"- {r.fault}: {n}" for r in rows for n in r.notes]
    if notes:
        text += ["", "## Notes", "", *notes]
    path = directory / ("chaos-short.md" if args.short else "chaos.md")
    path.write_text("\n".join(text) + "\n")
    path.with_suffix(".json").write_text(json.dumps(
        {"passed": passed, "short": args.short, "rows": [asdict(r) for r in rows], "checks": checks,
         "machine": host, "started": started, "seconds": round(seconds, 1)}, indent=2))
    return path


def run(stack: LocalStack, faults: list[Fault], uploads_per_fault: int, clients: int,
        recover_timeout: float) -> tuple[list[Row], dict, bool]:
    """The faults in turn on a running stack, then the final checks: (rows, checks, passed)."""
    data.configure(stack.settings)
    earlier_keys = frozenset(processed_keys(stack))
    api = Api(stack, user="chaos")
    # the 0.3 MP photo of bench/pipeline.py's uploads
    uploader = Uploader(api, api.create_group("chaos"), photo_jpeg((640, 480)), patience=recover_timeout)
    rows: list[Row] = []
    uploads: list[Upload] = []
    all_ids: list[str] = []
    try:
        for fault in faults:
            row, results = run_fault(stack, fault, uploader, uploads_per_fault, clients, recover_timeout, all_ids)
            rows.append(row)
            uploads += results
    finally:
        api.close()
    say("final checks")
    wait_until(lambda: not [r for r in statuses([u.image_id for u in uploads if u.uploaded_at]).values()
                            if r.status not in FINAL], recover_timeout)
    checks = final_checks(stack, uploads, earlier_keys)
    passed = (all(r.lost == 0 and r.seconds_to_recover is not None and r.seconds_back is not None for r in rows)
              and not checks["stuck_or_lost"] and not checks["duplicate_or_stray_processed_objects"]
              and not checks["missing_processed_objects"] and all(checks["failed"].values())
              and not checks["finished_more_than_once"])
    return rows, checks, passed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true", help="few uploads, short worker timings (CI)")
    parser.add_argument("--uploads", type=int, default=None, help="uploads per fault (default 30; short 8)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent uploading clients")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (UDAGRAM_WORKER_PROCESSES)")
    parser.add_argument("--api-processes", type=int, default=1, help="API processes (UDAGRAM_API_PROCESSES)")
    parser.add_argument("--only", action="append", choices=[f.name for f in FAULTS], help="run only these faults")
    parser.add_argument("--report", type=Path, default=ROOT / "bench" / "report")
    parser.add_argument("--model-store", type=Path, default=None,
                        help="a model store holding the default archive (default: built/cached in model-store/)")
    args = parser.parse_args(argv)
    args.uploads = args.uploads or (8 if args.short else 30)
    recover_timeout = SHORT_RECOVER_TIMEOUT if args.short else 420.0
    started = time.strftime("%Y-%m-%d %H:%M")
    began = time.monotonic()
    store = args.model_store
    if store is None:
        store = ROOT / "model-store"
        say("default archive: building it once into model-store/ if missing")
        build_archive(store, version=DEFAULT_VERSION)
    overrides = dict(SHORT_TIMINGS) if args.short else {}
    overrides |= {"UDAGRAM_WORKER_PROCESSES": str(args.workers), "UDAGRAM_API_PROCESSES": str(args.api_processes)}
    faults = [f for f in FAULTS if not args.only or f.name in args.only]
    with tempfile.TemporaryDirectory(prefix="udagram-chaos-") as tmp:
        say(f"starting the local stack in {tmp} ({args.api_processes} API process(es), {args.workers} worker(s))")
        with running_stack(Path(tmp) / "data", store, **overrides) as stack:
            rows, checks, passed = run(stack, faults, args.uploads, args.clients, recover_timeout)
            env = stack.env
    path = write_report(args.report, rows, checks, args, env, passed, started, time.monotonic() - began)
    print()
    print(table(rows))
    print()
    print(path.read_text().split("## End state", 1)[1].strip())
    say(f"{'PASSED' if passed else 'FAILED'}; report: {path}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
