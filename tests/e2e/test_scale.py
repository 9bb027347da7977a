"""Several of each process: the real local stack with UDAGRAM_API_PROCESSES=2 and
UDAGRAM_WORKER_PROCESSES=2 (and the chaos run's short worker timings), one stack for the module:

- each process is its own supervised program with its own metrics port, shown by `udagram status`;
- a burst of uploads through the API (createImage + presigned POST) from concurrent clients: every
  image DONE and finished exactly once (one "image done" across both workers' logs), one processed
  object each and no other; both API processes served createImage calls, both workers finished images;
- one API process killed: the other keeps serving the shared port, supervisord restarts it;
- the short chaos run (bench/chaos.py) on this stack, its worker fault killing one of the two
  workers: nothing lost, no image finished twice, one processed object per DONE image.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from bench import chaos
from bench.pipeline import scrape
from tests.fixtures.stack import LocalStack, running_stack
from tests.udagram.test_local_stack import (
    assert_status_command_shows_healthy,
    chelsea_jpeg,
    create_group,
    upload_image,
)
from udagram import data
from udagram.stack import control, supervisor
from udagram.stack.programs import instance_port

pytestmark = [pytest.mark.aws, pytest.mark.torchserve]

PROCESSES = 2
BURST = 30
CLIENTS = 8


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, torchserve_model_store: Path) -> Iterator[LocalStack]:
    with running_stack(tmp_path_factory.mktemp("scale") / "data", torchserve_model_store,
                       UDAGRAM_API_PROCESSES=str(PROCESSES), UDAGRAM_WORKER_PROCESSES=str(PROCESSES),
                       **chaos.SHORT_TIMINGS) as stack:
        data.configure(stack.settings)
        yield stack


def metrics_urls(stack: LocalStack, role: str) -> dict[str, str]:
    s = stack.settings
    host, first = (s.api_metrics_host, s.api_metrics_port) if role == "api" else (s.host, s.worker_metrics_port)
    return {name: f"http://{host}:{instance_port(first, index)}/metrics"
            for index, name in enumerate(stack.program_names(role))}


def counter(url: str, sample: str) -> float:
    return scrape(url).get(sample, 0.0)


def test_each_process_is_a_supervised_program_with_its_own_metrics_port(stack: LocalStack) -> None:
    assert stack.program_names("api") == ["api-1", "api-2"]
    assert stack.program_names("worker") == ["worker-1", "worker-2"]
    found = {s.name: s for s in control.status(stack.settings) or []}
    wanted = {"api-1", "api-2", "worker-1", "worker-2"}
    assert wanted <= found.keys() and not {"api", "worker"} & found.keys()
    assert [s for s in found.values() if not s.ok] == []
    assert len({found[name].pid for name in wanted}) == 4
    for url in [*metrics_urls(stack, "api").values(), *metrics_urls(stack, "worker").values()]:
        assert httpx.get(url, timeout=10).status_code == 200, url
    assert_status_command_shows_healthy(stack, wanted)


def test_a_burst_through_two_apis_and_two_workers_is_done_exactly_once(stack: LocalStack) -> None:
    token = stack.token("scaler")
    group = create_group(stack, token, "Burst over two of each")
    body = chelsea_jpeg()
    apis, workers = metrics_urls(stack, "api"), metrics_urls(stack, "worker")
    put_items = 'udagram_dynamodb_calls_total{operation=PutItem}'
    processed = "udagram_worker_images_processed_total{}"
    before = {name: counter(url, put_items) for name, url in apis.items()}
    processed_before = {name: counter(url, processed) for name, url in workers.items()}
    keys_before = set(chaos.processed_keys(stack))

    # every GraphQL call on a new connection, as separate browsers would: the kernel spreads them
    with ThreadPoolExecutor(CLIENTS) as pool:
        ids = list(pool.map(lambda _: upload_image(stack, token, group["id"], body), range(BURST)))
    assert len(set(ids)) == BURST
    assert chaos.wait_until(lambda: all(r.status in chaos.FINAL for r in chaos.statuses(ids).values())
                            and len(chaos.statuses(ids)) == BURST, 300), chaos.statuses(ids)

    records = chaos.statuses(ids)
    assert {i: r.status for i, r in records.items()} == {i: "DONE" for i in ids}
    assert all(r.processed_at and r.processed_key == data.processed_key(i) for i, r in records.items())
    finished = stack.images_done()
    times = sum(finished.values(), Counter())
    assert {i: times[i] for i in ids} == {i: 1 for i in ids}  # exactly once, by one of the workers
    by_worker = {name: sum(counts[i] for i in ids) for name, counts in finished.items()}
    assert set(by_worker) == set(workers) and all(by_worker.values()), by_worker
    assert {name: counter(url, processed) - processed_before[name] for name, url in workers.items()} == by_worker
    new_keys = sorted(set(chaos.processed_keys(stack)) - keys_before)
    assert new_keys == sorted(data.processed_key(i) for i in ids)  # one each, nothing else

    served = {name: counter(url, put_items) - before[name] for name, url in apis.items()}
    assert all(served.values()) and sum(served.values()) == BURST, served  # one PutItem per createImage
    print(f"\nburst of {BURST} from {CLIENTS} clients: createImage etc. PutItems per API process {served}; "
          f"images finished per worker {by_worker}; reconciliation {chaos.reconciliation(stack)}")


def test_one_api_process_killed_the_other_keeps_serving(stack: LocalStack) -> None:
    proxy = supervisor.rpc(supervisor.paths(stack.settings))
    pid = int(proxy.supervisor.getProcessInfo("api-1")["pid"])
    os.kill(pid, signal.SIGKILL)
    assert chaos.wait_until(lambda: not Path(f"/proc/{pid}").exists(), 10)  # killed and reaped
    # its socket left the port with it: new connections all reach api-2
    for _ in range(20):
        assert httpx.get(f"{stack.api_url}/healthz", timeout=10).status_code == 200

    def restarted() -> bool:
        states = {s.name: s for s in control.status(stack.settings) or []}
        return states["api-1"].ok and states["api-1"].pid not in (None, pid)

    assert chaos.wait_until(restarted, 60), control.status(stack.settings)


def test_the_short_chaos_run_with_two_workers_loses_nothing(stack: LocalStack) -> None:
    rows, checks, passed = chaos.run(stack, list(chaos.FAULTS), uploads_per_fault=8, clients=4,
                                     recover_timeout=chaos.SHORT_RECOVER_TIMEOUT)
    print(f"\n{chaos.table(rows)}\nfinished by worker: {checks['finished_by_worker']}; "
          f"reconciliation: {checks['reconciliation']}; by status: {checks['by_status']}; dlq: {len(checks['dlq'])}")
    assert [row.fault for row in rows] == [fault.name for fault in chaos.FAULTS]
    for row in rows:
        assert row.in_flight > 0 and row.lost == 0 and row.recovered == row.in_flight, row
        assert row.seconds_back is not None and row.seconds_to_recover is not None, row
    assert checks["uploaded"] == 8 * len(chaos.FAULTS) and checks["client_gave_up"] == []
    assert checks["stuck_or_lost"] == [] and all(checks["failed"].values()), checks
    assert checks["duplicate_or_stray_processed_objects"] == [] and checks["missing_processed_objects"] == []
    assert checks["processed_objects"] == checks["by_status"].get("DONE", 0)
    assert checks["finished_more_than_once"] == {}
    assert all(checks["finished_by_worker"].values()), checks["finished_by_worker"]
    assert passed
