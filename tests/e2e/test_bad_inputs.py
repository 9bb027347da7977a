"""The bad-input corpus (tests/e2e/bad_inputs.py) through the user's real path, on the local stack.

One module fixture pushes every case at once (createImage with the declared type and size ->
presigned POST to SeaweedFS, which enforces the policy -> S3 event -> SQS -> worker -> TorchServe
-> record) and waits for all of them against one deadline; then each case is its own test,
asserting its own outcome. Around the corpus: no process of the stack died or was restarted
(same pids for every supervised program and every TorchServe model worker), the worker logged no
unclassified failure, and an ordinary photo uploaded afterwards still becomes DONE.

A record whose upload S3 refused stays AWAITING_UPLOAD (the web page deletes the record itself
when the POST fails) until the worker's reconciliation marks it FAILED, 10 minutes after its upload
URL expired (tested in tests/workers/test_pipeline.py); meanwhile its imageUrl is null,
reprocessImage answers NotUploaded, and its owner can delete it.
"""

from __future__ import annotations

import io
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import pytest
from PIL import Image

from tests.e2e.bad_inputs import CASES, Case, Done, Failed, Refused
from tests.fixtures.stack import LocalStack
from tests.udagram.test_local_stack import CREATE_IMAGE, chelsea_jpeg, create_group, upload_image, wait_for_status
from udagram.aws import client
from udagram.stack import control, supervisor

pytestmark = pytest.mark.aws

CORPUS_DEADLINE_SECONDS = 420  # all cases together, on a busy 2-core machine (typically well under a minute)
FINISHED = {"DONE", "FAILED"}
COLOUR_TOLERANCE = 40  # JPEG at q85 after a resize: flat areas stay within a few levels; 40 tells colours apart

GROUP_IMAGES = """
query($id: ID!) {
  group(id: $id) {
    images(first: 100) { edges { node { id status title error processedImageUrl imageUrl
                                        predictions { label probability } } } }
  }
}"""
REPROCESS = """
mutation($id: ID!) { reprocessImage(id: $id) { __typename ... on Error { code message } } }"""
DELETE = "mutation($id: ID!) { deleteImage(id: $id) { __typename ... on Error { code message } } }"


@dataclass
class Outcome:
    case: Case
    created: dict = field(default_factory=dict)  # createImage's answer
    post: httpx.Response | None = None  # S3's answer to the presigned POST
    record: dict | None = None  # the image as the API shows it at the end
    processed: bytes | None = None  # the processed copy, for DONE

    @property
    def image_id(self) -> str | None:
        return (self.created.get("image") or {}).get("id")

    @property
    def uploaded(self) -> bool:
        return self.post is not None and self.post.status_code in (200, 201, 204)


@dataclass
class CorpusRun:
    outcomes: dict[str, Outcome]
    token: str
    group_id: str
    pids_before: dict[str, int]
    pids_after: dict[str, int]
    unhealthy_after: list[str]
    worker_log: str  # what the worker logged while the corpus ran
    seconds: float
    dead_letters: tuple[int, int]  # messages in the dead-letter queue before and after


def stack_pids(stack: LocalStack) -> dict[str, int]:
    """Every supervised program's pid, and each TorchServe model worker's (TorchServe restarts a
    dead model worker itself, with a new pid)."""
    pids = {s.name: s.pid for s in control.status(stack.settings) or []}
    st = stack.settings
    described = httpx.get(f"{st.torchserve_management_url}/models/{st.model_name}", timeout=30).json()
    for model in described:
        for worker in model.get("workers", []):
            pids[f"torchserve model worker {worker['id']}"] = worker["pid"]
    return pids


def dead_letters(stack: LocalStack) -> int:
    sqs = client("sqs", stack.settings)
    url = sqs.get_queue_url(QueueName=stack.settings.dead_letter_queue_name)["QueueUrl"]
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages",
                                                                        "ApproximateNumberOfMessagesNotVisible"])
    return sum(int(v) for v in attributes["Attributes"].values())


def push(stack: LocalStack, token: str, group_id: str, case: Case) -> Outcome:
    """createImage with the case's declared type and size, then the presigned POST (unless refused)."""
    body = case.make()
    variables = {"input": {"groupId": group_id, "caption": "", "fileName": case.file_name,
                           "contentType": case.content_type, "contentLength": case.declared_length(body)}}
    outcome = Outcome(case, created=stack.graphql(CREATE_IMAGE, variables, token)["createImage"])
    if outcome.created["__typename"] != "ImageUpload":
        return outcome
    upload = outcome.created["upload"]
    fields = dict(upload["fields"])
    if case.post_content_type:
        fields["Content-Type"] = case.post_content_type
    outcome.post = httpx.post(upload["url"], data=fields,
                              files={"file": (case.file_name, body, case.post_content_type or case.content_type)},
                              timeout=60)
    return outcome


def group_images(stack: LocalStack, group_id: str) -> dict[str, dict]:
    edges = stack.graphql(GROUP_IMAGES, {"id": group_id})["group"]["images"]["edges"]
    return {edge["node"]["id"]: edge["node"] for edge in edges}


@pytest.fixture(scope="module")
def corpus(local_stack: LocalStack) -> CorpusRun:
    stack = local_stack
    worker_log = supervisor.paths(stack.settings).log("worker")
    log_start = worker_log.stat().st_size if worker_log.exists() else 0
    pids_before = stack_pids(stack)
    dead_before = dead_letters(stack)
    token = stack.token("corpus-tester")
    group_id = create_group(stack, token, "Bad inputs")["id"]

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = {o.case.name: o for o in pool.map(lambda case: push(stack, token, group_id, case), CASES)}
    waiting = {o.image_id for o in outcomes.values() if o.uploaded}
    deadline = started + CORPUS_DEADLINE_SECONDS
    records: dict[str, dict] = {}
    while True:
        records = group_images(stack, group_id)
        if all(records.get(i, {}).get("status") in FINISHED for i in waiting) or time.monotonic() > deadline:
            break
        time.sleep(1)
    seconds = time.monotonic() - started
    for outcome in outcomes.values():
        outcome.record = records.get(outcome.image_id)
        if outcome.record and outcome.record["processedImageUrl"]:
            outcome.processed = httpx.get(outcome.record["processedImageUrl"], timeout=30).content

    with worker_log.open("rb") as log:
        log.seek(log_start)
        logged = log.read().decode(errors="replace")
    print(f"corpus: {len(CASES)} cases pushed and finished in {seconds:.1f} s")  # shown with a failure
    for name, outcome in outcomes.items():
        print(f"  {name:32} {observed(outcome)}")
    return CorpusRun(outcomes, token, group_id, pids_before, stack_pids(stack),
                     [f"{s.name}: {s.state} {s.health}" for s in control.status(stack.settings) or [] if not s.ok],
                     logged, seconds, (dead_before, dead_letters(stack)))


def observed(outcome: Outcome) -> str:
    """One line: what happened to a case."""
    if outcome.created.get("__typename") != "ImageUpload":
        return f"refused by createImage: {outcome.created.get('__typename')}: {outcome.created.get('message')}"
    if not outcome.uploaded:
        code = outcome.post.text.split("<Code>")[-1].split("</Code>")[0] if outcome.post is not None else "?"
        return f"refused by S3: {outcome.post.status_code if outcome.post is not None else '?'} {code}"
    record = outcome.record or {}
    if record.get("status") == "DONE" and outcome.processed:
        img = Image.open(io.BytesIO(outcome.processed))
        return f"DONE {img.format} {img.width}x{img.height} {record['title']}"
    return f"{record.get('status')} {record.get('error') or ''}"


def close(actual: tuple[int, ...], wanted: tuple[int, ...]) -> bool:
    # an RGB `wanted` on an RGBA pixel: the colour channels only
    return all(abs(a - w) <= COLOUR_TOLERANCE for a, w in zip(actual, wanted, strict=False))


def check_done(outcome: Outcome, expect: Done) -> None:
    record = outcome.record
    assert record["status"] == "DONE", record
    assert record["error"] is None and len(record["predictions"]) == 5
    # "Probably ..." when the top class is below the confidence threshold (noise, blank images)
    assert re.fullmatch(r"(Probably )?" + re.escape(record["predictions"][0]["label"]) + r" - \d{1,3}\.\d%",
                        record["title"]), record["title"]
    img = Image.open(io.BytesIO(outcome.processed))
    assert img.format == {"jpg": "JPEG", "png": "PNG"}[expect.extension], expect.reason
    assert img.size == expect.size, expect.reason
    mode = "RGBA" if expect.extension == "png" else "RGB"
    for (fx, fy), colour in expect.pixels.items():
        xy = (min(img.width - 1, int(fx * img.width)), min(img.height - 1, int(fy * img.height)))
        actual = img.convert(mode).getpixel(xy)
        if len(colour) == 4 and colour[3] == 0:
            assert actual[3] == 0, f"{xy}: {actual} should be transparent ({expect.reason})"
        else:
            assert close(actual, colour), f"{xy}: {actual}, expected about {colour} ({expect.reason})"
    assert b"<script" not in outcome.processed  # whatever came in, what goes out is a re-encoded picture


def check_refused_upload(stack: LocalStack, run: CorpusRun, outcome: Outcome, expect: Refused) -> None:
    assert outcome.post is not None and outcome.post.status_code in (400, 403), outcome.post
    assert f"<Code>{expect.code}</Code>" in outcome.post.text, outcome.post.text
    # Nothing reached the bucket, so nothing was processed: the record waits, with no URL to show.
    key = outcome.created["upload"]["fields"]["key"]
    listed = client("s3", stack.settings).list_objects_v2(Bucket=stack.settings.originals_bucket, Prefix=key)
    assert listed.get("KeyCount", 0) == 0
    assert outcome.record["status"] == "AWAITING_UPLOAD" and outcome.record["imageUrl"] is None, outcome.record
    # A re-run cannot conjure a file; the owner can delete the record (what the web page does).
    reprocess = stack.graphql(REPROCESS, {"id": outcome.image_id}, run.token)["reprocessImage"]
    assert reprocess["__typename"] == "NotUploaded", reprocess
    assert stack.graphql(DELETE, {"id": outcome.image_id}, run.token)["deleteImage"]["__typename"] == "Deleted"
    assert outcome.image_id not in group_images(stack, run.group_id)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_each_bad_input_ends_as_expected(case: Case, corpus: CorpusRun, local_stack: LocalStack) -> None:
    outcome = corpus.outcomes[case.name]
    expect = case.expect
    if isinstance(expect, Refused) and expect.at == "createImage":
        created = outcome.created
        assert created["__typename"] == expect.code, created
        assert expect.phrase in created["message"], created
        assert outcome.post is None
        return
    assert outcome.created["__typename"] == "ImageUpload", outcome.created
    if isinstance(expect, Refused):
        check_refused_upload(local_stack, corpus, outcome, expect)
        return
    assert outcome.uploaded, outcome.post.text
    assert outcome.record is not None and outcome.record["status"] in FINISHED, (
        f"{case.name} not finished {CORPUS_DEADLINE_SECONDS} s after the corpus started: {outcome.record}\n"
        f"worker log:\n{supervisor.tail(supervisor.paths(local_stack.settings).log('worker'))}")
    if isinstance(expect, Failed):
        assert outcome.record["status"] == "FAILED", outcome.record
        assert expect.phrase in outcome.record["error"], outcome.record["error"]
        assert outcome.record["processedImageUrl"] is None and outcome.record["predictions"] == []
    else:
        check_done(outcome, expect)


def test_the_corpus_crashed_nothing(corpus: CorpusRun) -> None:
    """Same pids before and after (supervisord restarts a dead program, TorchServe a dead model
    worker: either would show as a new pid), every program healthy, and no delivery failed in a
    way the worker could not classify (those are retried with back-off: an image stuck for minutes).
    A bad file is an answer (FAILED), not a poison message: nothing went to the dead-letter queue."""
    assert {"worker", "torchserve", "api", "s3", "sqs", "dynamodb", "s3-events"} <= set(corpus.pids_before)
    assert any(name.startswith("torchserve model worker") for name in corpus.pids_before)
    assert corpus.pids_after == corpus.pids_before
    assert corpus.unhealthy_after == []
    assert "unexpected failure" not in corpus.worker_log
    assert "unexpected error handling message" not in corpus.worker_log
    assert corpus.dead_letters[1] == corpus.dead_letters[0]


def test_an_ordinary_photo_after_the_corpus_is_done(corpus: CorpusRun, local_stack: LocalStack) -> None:
    image_id = upload_image(local_stack, corpus.token, corpus.group_id, chelsea_jpeg())
    image = wait_for_status(local_stack, image_id, FINISHED)
    assert image["status"] == "DONE", image
    assert len(image["predictions"]) == 5
