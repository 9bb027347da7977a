"""The classifier served by a real TorchServe: predictions, per-request errors inside a batch."""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from handlers.server import TorchServeProcess
from tests.handlers.images import chelsea_jpeg, coffee_jpeg, png_bomb, truncated_jpeg

pytestmark = pytest.mark.torchserve

CAT_CLASSES = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}
OCTET = {"Content-Type": "application/octet-stream"}


def predict(ts: TorchServeProcess, body: bytes, version: str | None = None) -> httpx.Response:
    path = f"/predictions/classifier/{version}" if version else "/predictions/classifier"
    return httpx.post(ts.inference_url + path, content=body, headers=OCTET, timeout=120)


def assert_prediction(answer: dict, version: str = "1.0") -> None:
    assert len(answer["top5"]) == 5 and len(set(answer["top5"])) == 5
    probs = answer["prob5"]
    assert len(probs) == 5
    assert all(0.0 <= p <= 1.0 for p in probs)
    assert probs == sorted(probs, reverse=True)
    assert sum(probs) <= 1.0 + 1e-6
    assert answer["model_name"] == "classifier"
    assert answer["model_version"] == version


def test_chelsea_is_a_cat(torchserve: TorchServeProcess) -> None:
    response = predict(torchserve, chelsea_jpeg())
    assert response.status_code == 200, response.text
    answer = response.json()
    assert_prediction(answer)
    assert answer["top5"][0] in CAT_CLASSES
    assert answer["prob5"][0] > 0.3


def test_coffee_is_espresso(torchserve: TorchServeProcess) -> None:
    response = predict(torchserve, coffee_jpeg())
    assert response.status_code == 200, response.text
    answer = response.json()
    assert_prediction(answer)
    assert answer["top5"][0] == "espresso"
    assert answer["prob5"][0] > 0.5


def batch_lines(ts: TorchServeProcess) -> list[tuple[int, int, int]]:
    """(size, predicted, refused) of every batch the handler logged so far."""
    log = ts.log_dir / "model_log.log"
    text = log.read_text(errors="replace") if log.exists() else ""
    return [
        tuple(int(g) for g in m.groups())  # type: ignore[misc]
        for m in re.finditer(r"batch size=(\d+) predicted=(\d+) refused=(\d+)", text)
    ]


def batches_since(ts: TorchServeProcess, before: int, images: int, timeout: float = 15.0) -> list[tuple[int, int, int]]:
    """The batches logged after the first `before`, once they account for `images` images (or at the
    timeout): the frontend writes the workers' log lines asynchronously, so the last batch's line
    can land after its responses."""
    deadline = time.monotonic() + timeout
    while True:
        batches = batch_lines(ts)[before:]
        if sum(size for size, _, _ in batches) >= images or time.monotonic() > deadline:
            return batches
        time.sleep(0.1)


def send_together(ts: TorchServeProcess, bodies: dict[str, bytes]) -> dict[str, httpx.Response]:
    """All requests released at once so TorchServe's dynamic batching groups them."""
    barrier = threading.Barrier(len(bodies))

    def send(body: bytes) -> httpx.Response:
        with httpx.Client(timeout=120) as client:
            barrier.wait()
            return client.post(ts.inference_url + "/predictions/classifier", content=body, headers=OCTET)

    with ThreadPoolExecutor(len(bodies)) as pool:
        futures = {name: pool.submit(send, body) for name, body in bodies.items()}
        return {name: future.result() for name, future in futures.items()}


def test_bad_inputs_in_a_batch_get_their_own_errors(torchserve: TorchServeProcess) -> None:
    bodies = {
        "chelsea": chelsea_jpeg(),
        "garbage": b"this is not an image, just some bytes" * 10,
        "coffee": coffee_jpeg(),
        "empty": b"",
        "truncated": truncated_jpeg(),
        "bomb": png_bomb(30000, 30000),
        "chelsea-2": chelsea_jpeg(),
        "coffee-2": coffee_jpeg(),
    }
    expected_errors = {
        "garbage": (400, "undecodable_image"),
        "empty": (400, "empty_input"),
        "truncated": (400, "undecodable_image"),
        "bomb": (413, "image_too_large"),
    }
    mixed = False
    for _attempt in range(3):  # until one batch held good and bad inputs together
        before = len(batch_lines(torchserve))
        responses = send_together(torchserve, bodies)
        for name, response in responses.items():
            if name in expected_errors:
                status, code = expected_errors[name]
                assert response.status_code == status, (name, response.text)
                body = response.json()
                assert body["code"] == code and body["error"], (name, body)
            else:
                assert response.status_code == 200, (name, response.text)
                assert_prediction(response.json())
        assert responses["chelsea"].json()["top5"][0] in CAT_CLASSES
        assert responses["coffee-2"].json()["top5"][0] == "espresso"
        new_batches = batches_since(torchserve, before, len(bodies))
        assert sum(size for size, _, _ in new_batches) == len(bodies)
        mixed = any(predicted and refused for _, predicted, refused in new_batches)
        if mixed:
            break
    assert mixed, "no batch ever mixed good and bad inputs: batching did not happen"
    # The worker survived all of it.
    after = predict(torchserve, chelsea_jpeg())
    assert after.status_code == 200 and after.json()["top5"][0] in CAT_CLASSES


@pytest.mark.parametrize(
    "how",
    ["image/jpeg", "application/octet-stream", "multipart"],
)
def test_the_ways_clients_send_an_image(torchserve: TorchServeProcess, how: str) -> None:
    url = torchserve.inference_url + "/predictions/classifier"
    if how == "multipart":
        response = httpx.post(url, files={"file": ("cat.jpg", chelsea_jpeg(), "image/jpeg")}, timeout=120)
    else:
        response = httpx.post(url, content=chelsea_jpeg(), headers={"Content-Type": how}, timeout=120)
    assert response.status_code == 200, response.text
    assert response.json()["top5"][0] in CAT_CLASSES


def test_json_body_is_refused_not_crashed(torchserve: TorchServeProcess) -> None:
    response = httpx.post(
        torchserve.inference_url + "/predictions/classifier", json={"url": "http://x/cat.jpg"}, timeout=60
    )
    assert response.status_code == 400
    assert response.json()["code"] == "unsupported_input"


def test_metrics_are_prometheus_text(torchserve: TorchServeProcess) -> None:
    predict(torchserve, coffee_jpeg())
    response = httpx.get(torchserve.metrics_url + "/metrics", timeout=30)
    assert response.status_code == 200
    assert "ts_inference_requests_total" in response.text


def test_everything_listens_on_loopback(torchserve: TorchServeProcess) -> None:
    config = (torchserve.run_dir / "config.properties").read_text()
    for key in ("inference_address", "metrics_address"):
        assert re.search(rf"^{key}=http://127\.0\.0\.1:\d+$", config, re.M), key
    # TorchServe's own management listener is a Unix socket in the run directory; the management
    # port is the guard in front of it, on loopback too
    assert f"management_address=unix:{torchserve.run_dir / 'management.sock'}" in config.splitlines()
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", torchserve.management_url)
    for key in ("grpc_inference_address", "grpc_management_address"):
        assert re.search(rf"^{key}=127\.0\.0\.1$", config, re.M), key
    assert not Path("logs").exists() or not any(Path("logs").glob("ts_log.log*")), "logs leaked into the cwd"
