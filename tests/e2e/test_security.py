"""Security checks against the REAL local stack (`local_stack`: supervisord, SeaweedFS, moto SQS,
dynalite, the S3 event bridge, TorchServe, the API under uvicorn and the worker, on free ports).

What the API-level tests (tests/graphql_api) cannot show, shown here on the running processes:
- every mutation, enumerated from the live schema by introspection (a new mutation is covered
  the day it lands), is refused without a token, with each forged token of
  tests/graphql_api/tokens.py, and with a non-Bearer header, and nothing changes in DynamoDB/S3;
- every mutation that takes an id refuses another signed-in user the owner's group and image;
- the API's own sign-in has no password-less way to a token, answers a wrong password and an
  unknown name alike, and refuses an authorization without PKCE or a code without its verifier;
- S3 (SeaweedFS) refuses unsigned writes, reads and listings: the presigned URLs are the only way in;
  SeaweedFS's own filer and volume ports refuse unsigned access too (no way around S3's checks);
- S3's keys are random per install, private files, each process holding only its identity's, and
  each identity can do only its process's job; the keys the source once held are refused;
- S3 answers CORS to the web page's origin only, and only for its uploads;
- TorchServe's token-less management API downloads no archive from a URL (ShellTorch), and its
  port refuses what a web page sends;
- no port of the stack grants a foreign web page CORS (beyond the explained SeaweedFS volume one),
  and dynalite refuses browser requests: pages the user opens can reach loopback ports;
- every listening socket of every process under supervisord (Java and TorchServe's Python
  workers, `weed`, node, moto included) is bound to loopback, and connecting to each of those
  ports (and every port the stack declares) on each non-loopback address of this machine is refused;
- the GraphQL limits (aliases, tokens, body size, depth, cost, batching, GET, introspection depth)
  hold on the running API over HTTP, with the status codes the product defines; the API's metrics
  are on their own port, not the public one.
Presigned URL expiry is proved at API level against SeaweedFS (tests/graphql_api/test_uploads.py).
"""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from botocore.exceptions import ClientError

from tests.fixtures.stack import LocalStack
from tests.graphql_api.hostile import fragment_doubling
from tests.graphql_api.oidc_flow import PASSWORD, Authorization, code_for, form_error, redeem, redirect_params, sign_in
from tests.graphql_api.tokens import FORGED, forged
from udagram.aws import client
from udagram.stack import programs, seaweedfs, supervisor

pytestmark = pytest.mark.aws

UDAGRAM = str(Path(sys.executable).parent / "udagram")


# Mutations that take another user's id on purpose, and why that is not a hole.
MAY_TARGET_OTHERS = {
    "createImage": "adds the caller's OWN image to a group: groups are shared albums (issue 3)",
}
# Admins may act on anyone's images; everyone else gets Forbidden (graphql_api/admin/).
ADMIN_ONLY = {"retryImage"}

TYPE_REF = "kind name ofType { kind name ofType { kind name ofType { kind name } } }"
SCHEMA_QUERY = f"""{{
  __schema {{
    queryType {{ name }}
    mutationType {{ fields {{ name args {{ name defaultValue type {{ {TYPE_REF} }} }} type {{ {TYPE_REF} }} }} }}
    types {{
      kind name
      fields {{ name args {{ name defaultValue type {{ {TYPE_REF} }} }} type {{ {TYPE_REF} }} }}
      inputFields {{ name defaultValue type {{ {TYPE_REF} }} }}
      possibleTypes {{ name }}
      enumValues {{ name }}
    }}
  }}
}}"""


# --- talking to the running API ------------------------------------------------------------------


def post(stack: LocalStack, query: str, variables: dict | None = None, token: str | None = None,
         headers: dict | None = None, url: str | None = None) -> httpx.Response:
    headers = dict(headers or {})
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.post(f"{url or stack.api_url}/graphql", json={"query": query, "variables": variables or {}},
                      headers=headers, timeout=30)


def error_messages(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body.get("data") is None, body
    return [e["message"] for e in body["errors"]]


# --- the live schema, by introspection -----------------------------------------------------------


@dataclass
class Schema:
    raw: dict

    def __post_init__(self) -> None:
        self.types = {t["name"]: t for t in self.raw["types"]}
        self.mutations = self.raw["mutationType"]["fields"]
        self.query_type = self.raw["queryType"]["name"]
        self.error_types = {t["name"] for t in self.types["Error"]["possibleTypes"]}

    @staticmethod
    def named(ref: dict) -> dict:
        while ref.get("ofType"):
            ref = ref["ofType"]
        return ref

    @staticmethod
    def type_string(ref: dict) -> str:
        if ref["kind"] == "NON_NULL":
            return Schema.type_string(ref["ofType"]) + "!"
        if ref["kind"] == "LIST":
            return f"[{Schema.type_string(ref['ofType'])}]"
        return ref["name"]

    @staticmethod
    def required(arg: dict) -> bool:
        return arg["type"]["kind"] == "NON_NULL" and arg["defaultValue"] is None

    def takes_an_id(self, ref: dict, seen: frozenset = frozenset()) -> bool:
        named = self.named(ref)
        if named["name"] == "ID":
            return True
        if named["kind"] == "INPUT_OBJECT" and named["name"] not in seen:
            return any(self.takes_an_id(f["type"], seen | {named["name"]})
                       for f in self.types[named["name"]]["inputFields"])
        return False

    def value(self, ref: dict, ids: dict[str, str], name: str) -> Any:
        """A well-formed value for a required argument; an ID is the `ids` entry its name suggests."""
        if ref["kind"] == "NON_NULL":
            return self.value(ref["ofType"], ids, name)
        if ref["kind"] == "LIST":
            return [self.value(ref["ofType"], ids, name)]
        kind, type_name = ref["kind"], ref["name"]
        if type_name == "ID":
            return ids["group"] if "group" in name.lower() else ids["target"]
        if kind == "ENUM":
            return self.types[type_name]["enumValues"][0]["name"]
        if kind == "INPUT_OBJECT":
            fields = self.types[type_name]["inputFields"]
            known = {"contentType": "image/jpeg", "contentLength": 1000}  # so createImage gets past validation
            return {f["name"]: known.get(f["name"]) or self.value(f["type"], ids, f["name"])
                    for f in fields if self.required(f)}
        return {"String": "x", "Int": 1, "Float": 1.0, "Boolean": False}.get(type_name, "x")

    def selection(self, ref: dict) -> str:
        named = self.types[self.named(ref)["name"]]
        if named["kind"] in ("SCALAR", "ENUM"):
            return ""
        possible = {p["name"] for p in named["possibleTypes"] or []} or {named["name"]}
        error = " ... on Error { code message }" if possible & self.error_types else ""
        return f"{{ __typename{error} }}"

    def call(self, mutation: dict, ids: dict[str, str]) -> tuple[str, dict]:
        """A GraphQL document calling `mutation` with its required arguments, and its variables."""
        required = [a for a in mutation["args"] if self.required(a)]
        declared = ", ".join(f"${a['name']}: {self.type_string(a['type'])}" for a in required)
        passed = ", ".join(f"{a['name']}: ${a['name']}" for a in required)
        document = (f"mutation{f'({declared})' if declared else ''} "
                    f"{{ {mutation['name']}{f'({passed})' if passed else ''} {self.selection(mutation['type'])} }}")
        return document, {a["name"]: self.value(a["type"], ids, a["name"]) for a in required}

    def deepest_query(self, cap: int) -> tuple[int, str]:
        """The deepest selection the schema allows from the query root, at most `cap` deep, and its
        depth (introspection fields aside, which the depth limiter ignores by design)."""
        memo: dict[tuple[str, int], tuple[int, str]] = {}

        def deepest(type_name: str, remaining: int) -> tuple[int, str]:
            key = (type_name, remaining)
            if key not in memo:
                memo[key] = (0, "")
                the_type = self.types[type_name]
                best = (0, "")
                if the_type["kind"] in ("UNION", "INTERFACE"):
                    for member in the_type["possibleTypes"]:
                        depth, inner = deepest(member["name"], remaining)
                        if depth > best[0]:
                            best = (depth, f"... on {member['name']} {{ {inner} }}")
                elif the_type["kind"] == "OBJECT" and remaining > 0:
                    for f in the_type["fields"]:
                        if any(self.required(a) for a in f["args"] if self.named(a["type"])["name"] != "ID"):
                            continue
                        args = ", ".join(f'{a["name"]}: "{"0" * 32}"' for a in f["args"] if self.required(a))
                        call = f["name"] + (f"({args})" if args else "")
                        child = self.named(f["type"])
                        if child["kind"] in ("SCALAR", "ENUM"):
                            candidate = (1, call)
                        else:
                            depth, inner = deepest(child["name"], remaining - 1)
                            candidate = (depth + 1, f"{call} {{ __typename {inner} }}")
                        if candidate[0] > best[0]:
                            best = candidate
                memo[key] = best
            return memo[key]

        fields, selection = deepest(self.query_type, cap + 1)
        return fields - 1, f"{{ {selection} }}"  # depth as the limiter counts it: top-level fields are 0


@pytest.fixture(scope="module")
def schema(local_stack: LocalStack) -> Schema:
    response = post(local_stack, SCHEMA_QUERY)
    assert response.status_code == 200 and not response.json().get("errors"), response.text
    found = Schema(response.json()["data"]["__schema"])
    assert found.mutations, "the live schema lists no mutations"
    return found


# --- an owner's records, and what they look like in the data servers ------------------------------


@pytest.fixture(scope="module")
def alices(local_stack: LocalStack) -> Iterator[dict[str, str]]:
    """alice's group and an uploaded image of hers (ids); both deleted by alice at the end."""
    token = local_stack.token("alice")
    group = local_stack.graphql('mutation { createGroup(input: {name: "alice only"}) { ... on Group { id } } }',
                                token=token)["createGroup"]["id"]
    created = local_stack.graphql(
        "mutation($g: ID!) { createImage(input: {groupId: $g, contentType: \"image/gif\", contentLength: 35}) {"
        " ... on ImageUpload { image { id } upload { url fields } } } }", {"g": group}, token)["createImage"]
    upload = created["upload"]
    gif = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;" + b"\x00" * 21
    response = httpx.post(upload["url"], data=upload["fields"], files={"file": ("a.gif", gif, "image/gif")}, timeout=30)
    assert response.status_code in (200, 201, 204), response.text
    ids = {"group": group, "image": created["image"]["id"], "original": upload["fields"]["key"]}
    yield ids
    delete = "mutation($id: ID!) {{ {0}(id: $id) {{ __typename }} }}"
    assert local_stack.graphql(delete.format("deleteImage"), {"id": ids["image"]}, token) == \
        {"deleteImage": {"__typename": "Deleted"}}
    assert local_stack.graphql(delete.format("deleteGroup"), {"id": ids["group"]}, token) == \
        {"deleteGroup": {"__typename": "Deleted"}}


def _item(settings, table: str, item_id: str) -> dict | None:
    found = client("dynamodb", settings).get_item(TableName=table, Key={"id": {"S": item_id}}, ConsistentRead=True)
    return found.get("Item")


def _count(settings, table: str) -> int:
    return client("dynamodb", settings).scan(TableName=table, Select="COUNT", ConsistentRead=True)["Count"]


def _keys(settings, bucket: str) -> set[str]:
    pages = client("s3", settings).get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


def snapshot(stack: LocalStack, ids: dict[str, str]) -> dict:
    """What a successful write would change: table sizes, the owner's records, the originals.
    (Records of images other tests uploaded may still be moving to DONE: only counts of those.)"""
    st = stack.settings
    group, image = _item(st, st.groups_table, ids["group"]), _item(st, st.images_table, ids["image"])
    assert group and image, "alice's records are gone"
    return {
        "groups": _count(st, st.groups_table),
        "images": _count(st, st.images_table),
        "alice's group": group,
        "alice's image": image,
        "originals": _keys(st, st.originals_bucket),
    }


# --- writes: tokens ------------------------------------------------------------------------------


def test_every_mutation_refuses_missing_bad_and_forged_tokens(local_stack, schema, alices):
    """Each mutation of the live schema, aimed at alice's real group and image, sent with no token,
    a non-Bearer header, and every forged token claiming to be alice: all `NotAuthenticated`
    (naming the defect), and nothing changed anywhere."""
    settings = local_stack.settings
    tokens = {case: forged(settings, case) for case in FORGED}  # signed with the running API's own key
    before = snapshot(local_stack, alices)
    refused: list[str] = []
    for mutation in schema.mutations:
        name = mutation["name"]
        targets = ("image", "group") if any(schema.takes_an_id(a["type"]) for a in mutation["args"]) else ("image",)
        for target in targets:
            document, variables = schema.call(mutation, {"target": alices[target], "group": alices["group"]})
            attempts = [("no token", {}, "sign in to do this"),
                        ("Basic scheme", {"Authorization": "Basic YWxpY2U6YWxpY2U="}, "Bearer <token>"),
                        ("Bearer without a token", {"Authorization": "Bearer"}, "Bearer <token>")]
            attempts += [(case, {"Authorization": f"Bearer {token}"}, FORGED[case]) for case, token in tokens.items()]
            for case, headers, reason in attempts:
                response = post(local_stack, document, variables, headers=headers)
                assert response.status_code == 200, (name, case, response.text)
                body = response.json()
                assert not body.get("errors"), (name, case, document, body)
                result = body["data"][name]
                assert isinstance(result, dict) and result["__typename"] == "NotAuthenticated", (name, case, result)
                assert result["code"] == "UNAUTHENTICATED" and reason in result["message"], (name, case, result)
                refused.append(f"{name}/{target}/{case}")
    assert snapshot(local_stack, alices) == before
    assert len(refused) >= len(schema.mutations) * (len(FORGED) + 3)
    # the same token, validly signed, does write: the refusals above were about the tokens
    ok = post(local_stack, 'mutation { createGroup(input: {name: "valid"}) { __typename ... on Group { id } } }',
              token=local_stack.token("alice")).json()["data"]["createGroup"]
    assert ok["__typename"] == "Group"
    assert local_stack.graphql("mutation($id: ID!) { deleteGroup(id: $id) { __typename } }", {"id": ok["id"]},
                               local_stack.token("alice"))["deleteGroup"]["__typename"] == "Deleted"


# --- sign-in ------------------------------------------------------------------------------------


def test_the_running_sign_in_needs_a_password_and_pkce(local_stack):
    """The stack's API as issuer: no password-less way to a token, the password form refuses a
    wrong password and an unknown name alike, and a code is worth nothing without its verifier."""
    base = local_stack.api_url
    gone = httpx.post(f"{base}/auth/local/token", json={"user": "alice"}, timeout=30)
    assert gone.status_code in (404, 405), gone.text
    name = f"pkce-{uuid.uuid4().hex[:6]}"
    local_stack.add_account(name, PASSWORD)
    with httpx.Client(base_url=base, timeout=30) as http:
        authorization = Authorization(local_stack.settings)
        wrong, unknown = (sign_in(http, authorization, user, password)
                          for user, password in ((name, "not the password"), (f"no-{name}", PASSWORD)))
        assert wrong.status_code == unknown.status_code == 401
        assert form_error(wrong) == form_error(unknown) == "Wrong user name or password."
        no_pkce = sign_in(http, authorization, name, PASSWORD, code_challenge=None, code_challenge_method=None)
        assert "code" not in redirect_params(no_pkce) and redirect_params(no_pkce)["error"] == "invalid_request"
        code = code_for(http, authorization, name)
        assert redeem(http, authorization, code, verifier=None).json()["error"] == "invalid_grant"
        tokens = redeem(http, authorization, code).json()
        me = post(local_stack, "{ me { id } }", token=tokens["access_token"]).json()
        assert me == {"data": {"me": {"id": name}}}


# --- writes: ownership ---------------------------------------------------------------------------


def test_another_user_cannot_touch_the_owners_images_or_groups(local_stack, schema, alices):
    """mallory (validly signed in) calls every id-taking mutation on alice's group and on her image:
    each is `NotOwner` for its own kind of object (`NotFound` for the other kind), and alice's
    records and files are unchanged. Mutations that may target others' ids are listed, with why."""
    mallory = local_stack.token("mallory")
    takes_id = [m for m in schema.mutations if any(schema.takes_an_id(a["type"]) for a in m["args"])]
    owner_only = [m for m in takes_id if m["name"] not in MAY_TARGET_OTHERS and m["name"] not in ADMIN_ONLY]
    assert owner_only, f"no owner-only mutation found among {[m['name'] for m in schema.mutations]}"
    before = snapshot(local_stack, alices)
    outcomes: dict[str, dict[str, str]] = {}
    for mutation in owner_only:
        name = mutation["name"]
        outcomes[name] = {}
        for target in ("image", "group"):
            document, variables = schema.call(mutation, {"target": alices[target], "group": alices["group"]})
            body = post(local_stack, document, variables, token=mallory).json()
            assert not body.get("errors"), (name, body)
            outcomes[name][target] = body["data"][name]["__typename"]
    for name, results in outcomes.items():
        assert set(results.values()) <= {"NotOwner", "NotFound"}, (name, results)
        assert "NotOwner" in results.values(), f"{name} never recognised alice's object as hers: {results}"
    for mutation in (m for m in takes_id if m["name"] in ADMIN_ONLY):
        for target in ("image", "group"):
            document, variables = schema.call(mutation, {"target": alices[target], "group": alices["group"]})
            body = post(local_stack, document, variables, token=mallory).json()
            assert body["data"][mutation["name"]]["__typename"] == "Forbidden", (mutation["name"], body)
    assert snapshot(local_stack, alices) == before, outcomes

    # the allowed cross-user write gives mallory HER image in alice's group, nothing of alice's
    created = post(local_stack, "mutation($g: ID!) { createImage(input: {groupId: $g, contentType: \"image/png\","
                   " contentLength: 10}) { __typename ... on ImageUpload { image { id owner groupId } } } }",
                   {"g": alices["group"]}, token=mallory).json()["data"]["createImage"]
    assert created["image"]["owner"] == "mallory" and created["image"]["groupId"] == alices["group"]
    assert _item(local_stack.settings, local_stack.settings.groups_table, alices["group"])["owner"]["S"] == "alice"
    assert local_stack.graphql("mutation($id: ID!) { deleteImage(id: $id) { __typename } }",
                               {"id": created["image"]["id"]}, mallory)["deleteImage"]["__typename"] == "Deleted"


# --- S3 without a signature ----------------------------------------------------------------------


def test_s3_refuses_unsigned_writes_reads_and_listings(local_stack, alices):
    """The presigned URLs are the only way into the buckets: SeaweedFS refuses anonymous requests."""
    st = local_stack.settings
    s3 = st.s3_endpoint_url
    key = f"originals/{'f' * 32}.jpg"
    put = httpx.put(f"{s3}/{st.originals_bucket}/{key}", content=b"unsigned", timeout=30)
    assert put.status_code == 403, put.text
    form = httpx.post(f"{s3}/{st.originals_bucket}", data={"key": key},
                      files={"file": ("x.jpg", b"unsigned", "image/jpeg")}, timeout=30)
    assert form.status_code in (400, 403), form.text
    assert key not in _keys(st, st.originals_bucket)
    read = httpx.get(f"{s3}/{st.originals_bucket}/{alices['original']}", timeout=30)
    assert read.status_code == 403 and not read.content.startswith(b"GIF89a"), read.text
    for bucket in (st.originals_bucket, st.processed_bucket):
        listing = httpx.get(f"{s3}/{bucket}?list-type=2", timeout=30)
        assert listing.status_code == 403 and alices["original"] not in listing.text, listing.text
    delete = httpx.delete(f"{s3}/{st.originals_bucket}/{alices['original']}", timeout=30)
    assert delete.status_code == 403, delete.text
    assert alices["original"] in _keys(st, st.originals_bucket)


def test_seaweedfs_internal_ports_refuse_unsigned_access(local_stack, alices):
    """Behind the S3 gateway, SeaweedFS's master, filer and volume server listen on loopback too.
    The master's and filer's HTTP APIs are off and the volume server wants a JWT for writes, so
    S3's signatures cannot be bypassed: no direct read, listing, write or delete of an object, no
    collection (bucket) deletion by a plain GET (probed with a collection that does not exist)."""
    st = local_stack.settings
    ports = seaweedfs.internal_ports(st)
    master = f"http://127.0.0.1:{ports['master.port']}"
    filer = f"http://127.0.0.1:{ports['filer.port']}/buckets/{st.originals_bucket}"
    original = f"{filer}/{alices['original']}"
    attempts = {
        "filer read": httpx.get(original, timeout=30),
        "filer listing": httpx.get(f"{filer}/originals/", headers={"Accept": "application/json"}, timeout=30),
        "filer write": httpx.post(f"{filer}/originals/{'e' * 32}.jpg", files={"file": ("e.jpg", b"planted")},
                                  timeout=30),
        "filer delete": httpx.delete(original, timeout=30),
        "master collection delete": httpx.get(f"{master}/col/delete?collection=no-such-bucket-{uuid.uuid4().hex}",
                                              timeout=30),
        "master file id assignment": httpx.get(f"{master}/dir/assign", timeout=30),
        "volume write": httpx.post(f"http://127.0.0.1:{ports['volume.port']}/1,01637037d6",
                                   files={"file": ("v", b"planted")}, timeout=30),
    }
    answered = {what: f"{r.status_code} {r.text[:100]}" for what, r in attempts.items()
                if r.status_code not in (401, 404)}
    assert answered == {}, answered
    assert not attempts["filer read"].content.startswith(b"GIF89a")
    assert alices["original"] in _keys(st, st.originals_bucket)
    assert f"originals/{'e' * 32}.jpg" not in _keys(st, st.originals_bucket)


# --- S3 identities: per install, least privilege -----------------------------------------------


def _s3_as(settings, access_key: str, secret_key: str):
    return client("s3", settings.model_copy(update={"aws_access_key_id": access_key,
                                                    "aws_secret_access_key": secret_key}), retries={"max_attempts": 1})


def _s3_error(call) -> str:
    try:
        call()
    except ClientError as exc:
        return exc.response["Error"]["Code"]
    return "allowed"


def test_s3_refuses_the_keys_the_source_used_to_hold(local_stack, alices):
    """`udagram-local` / `udagram-local-secret` were constants in udagram/settings.py, an admin of
    the local S3: anyone who read the code could sign requests. The stack knows them no more."""
    st = local_stack.settings
    old = _s3_as(st, "udagram-local", "udagram-local-secret")
    key = f"originals/{'c' * 32}.jpg"
    assert _s3_error(lambda: old.list_objects_v2(Bucket=st.originals_bucket)) == "InvalidAccessKeyId"
    assert _s3_error(lambda: old.put_object(Bucket=st.originals_bucket, Key=key, Body=b"x")) == "InvalidAccessKeyId"
    assert _s3_error(lambda: old.delete_object(Bucket=st.originals_bucket, Key=alices["original"])) \
        == "InvalidAccessKeyId"
    post = old.generate_presigned_post(Bucket=st.originals_bucket, Key=key)
    forged_upload = httpx.post(post["url"], data=post["fields"], files={"file": ("x.jpg", b"x")}, timeout=30)
    assert forged_upload.status_code == 403, forged_upload.text
    assert _keys(st, st.originals_bucket) >= {alices["original"]} and key not in _keys(st, st.originals_bucket)


def _stack_processes(stack: LocalStack) -> list[psutil.Process]:
    root = supervisor.running_pid(supervisor.paths(stack.settings))
    assert root, "the local stack's supervisord is not running"
    return [psutil.Process(root), *psutil.Process(root).children(recursive=True)]


def test_s3_keys_are_private_files_each_process_reading_only_its_own(local_stack):
    """The keys were generated at the first start into <data_dir>/secrets (0600, directory 0700);
    none is in supervisord's config, the saved settings, a command line or a process environment:
    each program is only told which identity it is, and the API and the worker hold only theirs."""
    st = local_stack.settings
    folder = st.data_dir / "secrets"
    assert oct(folder.stat().st_mode & 0o777) == "0o700"
    files = {f.stem: f for f in folder.iterdir()}
    assert set(files) == {"admin", "api", "worker"}
    assert {name: oct(f.stat().st_mode & 0o777) for name, f in files.items()} == dict.fromkeys(files, "0o600")
    keys = {name: json.loads(f.read_text()) for name, f in files.items()}
    secrets = {value for pair in keys.values() for value in pair.values()}
    assert st.aws_access_key_id == keys["admin"]["accessKeyId"]  # what a command run by hand uses
    assert oct((seaweedfs.workdir(st) / "identities.json").stat().st_mode & 0o777) == "0o600"

    texts = {"supervisord.conf": (st.data_dir / "supervisord.conf").read_text(),
             "stack-settings.json": (st.data_dir / "stack-settings.json").read_text()}
    identity_of = {}
    for process in _stack_processes(local_stack):
        try:
            texts[f"{process.pid} command line"] = " ".join(process.cmdline())
            environment = process.environ()
        except psutil.NoSuchProcess:
            continue
        texts[f"{process.pid} environment"] = json.dumps(environment)
        identity_of[" ".join(process.cmdline()[-2:])] = environment.get("UDAGRAM_LOCAL_IDENTITY")
    leaks = {where: sorted(value[:6] + "..." for value in secrets if value in text) for where, text in texts.items()}
    assert {where: found for where, found in leaks.items() if found} == {}
    assert identity_of[f"{UDAGRAM} api"] == "api" and identity_of[f"{UDAGRAM} worker"] == "worker"
    assert identity_of["-m udagram.stack.s3_events"] == identity_of["model serve"] == "none"


def test_each_s3_identity_can_do_only_its_job(local_stack):
    """The API presigns uploads into originals/, downloads of both buckets and deletes an image's
    objects; the worker reads (and may delete) originals and writes processed copies; only the
    admin creates and configures buckets. Whatever else each tries is refused by SeaweedFS."""
    st = local_stack.settings
    api, worker = (client("s3", st.as_local_identity(name), retries={"max_attempts": 1}) for name in ("api", "worker"))
    admin = client("s3", st)
    name = uuid.uuid4().hex
    original, processed = f"originals/{name}.jpg", f"processed/{name}.jpg"
    try:
        # the API's job
        post = api.generate_presigned_post(Bucket=st.originals_bucket, Key=original)
        upload = httpx.post(post["url"], data=post["fields"], files={"file": ("a.jpg", b"original")}, timeout=30)
        assert upload.status_code == 204, upload.text
        assert api.head_object(Bucket=st.originals_bucket, Key=original)["ContentLength"] == 8
        # the worker's job
        assert worker.get_object(Bucket=st.originals_bucket, Key=original)["Body"].read() == b"original"
        worker.put_object(Bucket=st.processed_bucket, Key=processed, Body=b"processed")
        assert httpx.get(api.generate_presigned_url("get_object", Params={"Bucket": st.processed_bucket,
                                                                           "Key": processed}), timeout=30).content \
            == b"processed"
        # ...and nothing more
        refused = {
            "API writes a processed copy": lambda: api.put_object(Bucket=st.processed_bucket, Key=processed,
                                                                  Body=b"overwritten"),
            "API writes outside originals/": lambda: api.put_object(Bucket=st.originals_bucket,
                                                                    Key=f"elsewhere/{name}", Body=b"x"),
            "API changes the bucket's CORS": lambda: api.put_bucket_cors(
                Bucket=st.originals_bucket, CORSConfiguration={"CORSRules": [
                    {"AllowedOrigins": ["*"], "AllowedMethods": ["GET"]}]}),
            "API lists a bucket": lambda: api.list_objects_v2(Bucket=st.processed_bucket),
            "API creates a bucket": lambda: api.create_bucket(Bucket=f"planted-{name[:8]}"),
            "worker writes an original": lambda: worker.put_object(Bucket=st.originals_bucket, Key=original,
                                                                   Body=b"overwritten"),
            "worker deletes a bucket": lambda: worker.delete_bucket(Bucket=st.processed_bucket),
            "worker lists a bucket": lambda: worker.list_objects_v2(Bucket=st.originals_bucket),
        }
        outcomes = {what: _s3_error(call) for what, call in refused.items()}
        assert outcomes == dict.fromkeys(refused, "AccessDenied")
        post = api.generate_presigned_post(Bucket=st.processed_bucket, Key=processed)
        planted = httpx.post(post["url"], data=post["fields"], files={"file": ("p.jpg", b"overwritten")}, timeout=30)
        assert planted.status_code == 403, planted.text
        post = worker.generate_presigned_post(Bucket=st.originals_bucket, Key=original)
        planted = httpx.post(post["url"], data=post["fields"], files={"file": ("o.jpg", b"overwritten")}, timeout=30)
        assert planted.status_code == 403, planted.text
        assert admin.get_object(Bucket=st.originals_bucket, Key=original)["Body"].read() == b"original"
        assert admin.get_object(Bucket=st.processed_bucket, Key=processed)["Body"].read() == b"processed"
        assert f"elsewhere/{name}" not in _keys(st, st.originals_bucket)
        # deleteImage (the API) and an orphaned original (the worker)
        api.delete_object(Bucket=st.processed_bucket, Key=processed)
        worker.delete_object(Bucket=st.originals_bucket, Key=original)
        assert original not in _keys(st, st.originals_bucket) and processed not in _keys(st, st.processed_bucket)
    finally:
        admin.delete_object(Bucket=st.originals_bucket, Key=original)
        admin.delete_object(Bucket=st.processed_bucket, Key=processed)


def _preflight(url: str, origin: str, method: str) -> httpx.Response | None:
    try:
        return httpx.options(url, timeout=10, headers={"Origin": origin, "Access-Control-Request-Method": method})
    except httpx.HTTPError:  # SeaweedFS drops the connection of an origin it refuses on its root path
        return None


def _methods_granted(url: str, origin: str, methods: tuple[str, ...]) -> set[str]:
    """The methods a preflight from `origin` is allowed (the origin granted and the method listed)."""
    granted = set()
    for method in methods:
        answer = _preflight(url, origin, method)
        if answer is None or answer.headers.get("access-control-allow-origin") not in ("*", origin):
            continue
        listed = {m.strip() for m in answer.headers.get("access-control-allow-methods", "").split(",")}
        if method in listed or "*" in listed:
            granted.add(method)
    return granted


def test_s3_cors_answers_only_the_web_page_and_only_for_uploads(local_stack, alices):
    """A cross-site page listed and deleted processed objects: SeaweedFS answered CORS for any
    origin (its global default `*`, which also covers every bucket without a CORS configuration
    of its own, the processed one). Now no preflight from a foreign origin is granted anything,
    anywhere; the page's own origin may POST to the originals bucket, its uploads, and nothing else;
    no answer carrying data is readable cross-origin but the page's upload."""
    st = local_stack.settings
    s3 = st.s3_endpoint_url
    page, evil = st.page_origins[0], "http://evil.example"
    paths = {"root": "/", "originals bucket": f"/{st.originals_bucket}", "originals/": f"/{st.originals_bucket}/",
             "an original": f"/{st.originals_bucket}/{alices['original']}",
             "processed bucket": f"/{st.processed_bucket}", "processed/": f"/{st.processed_bucket}/",
             "a processed copy": f"/{st.processed_bucket}/processed/{alices['image']}.jpg"}
    methods = ("GET", "HEAD", "POST", "PUT", "DELETE")
    foreign = {(where, origin, m) for where, path in paths.items() for m in methods for origin in (evil, "null")
               if (answer := _preflight(f"{s3}{path}", origin, m)) is not None
               and answer.headers.get("access-control-allow-origin") is not None}
    assert foreign == set(), f"S3 grants a foreign page: {sorted(foreign)}"
    # The page's origin: POST on the originals bucket only. (SeaweedFS answers the preflights of
    # "/" and of bare bucket URLs from its global list, with methods "*": see docs/security.md.)
    for origin in st.page_origins:
        granted = {where: _methods_granted(f"{s3}{paths[where]}", origin, methods)
                   for where in ("originals/", "an original", "processed/", "a processed copy")}
        assert granted == {"originals/": {"POST"}, "an original": {"POST"}, "processed/": set(),
                           "a processed copy": set()}, origin
    # Data is readable by no other origin: a signed download (what the page shows in <img>) carries no
    # CORS, and what SeaweedFS answers with its hard-coded `*` (requests outside a bucket's routes)
    # are errors without data.
    admin, copy = client("s3", st), f"processed/{uuid.uuid4().hex}.jpg"
    admin.put_object(Bucket=st.processed_bucket, Key=copy, Body=b"processed")
    try:
        for bucket, key in ((st.originals_bucket, alices["original"]), (st.processed_bucket, copy)):
            url = admin.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key})
            for origin in (page, evil):
                answer = httpx.get(url, headers={"Origin": origin}, timeout=30)
                assert answer.status_code == 200 and "access-control-allow-origin" not in answer.headers, origin
    finally:
        admin.delete_object(Bucket=st.processed_bucket, Key=copy)
    for origin in (page, evil):
        for where, path in paths.items():
            for method in methods:
                answer = httpx.request(method, f"{s3}{path}", headers={"Origin": origin}, timeout=30)
                if answer.headers.get("access-control-allow-origin") in ("*", origin):
                    assert answer.status_code >= 400 and (not answer.content or b"<Error>" in answer.content), (
                        origin, where, method, answer.status_code, answer.text[:200])

    # the page's real upload: its origin reads the answer, a foreign page's copy of it does not
    created = local_stack.graphql(
        "mutation($g: ID!) { createImage(input: {groupId: $g, contentType: \"image/gif\", contentLength: 35}) {"
        " ... on ImageUpload { image { id } upload { url fields } } } }", {"g": alices["group"]},
        local_stack.token("alice"))["createImage"]
    upload, gif = created["upload"], b"GIF89a\x01\x00\x01\x00\x00\x00\x00;" + b"\x00" * 21
    preflight = _preflight(upload["url"], page, "POST")  # what the page's XHR with upload progress sends first
    assert preflight is not None and preflight.headers.get("access-control-allow-origin") == page
    for origin, expected in ((page, page), (evil, None)):
        answer = httpx.post(upload["url"], data=upload["fields"], files={"file": ("a.gif", gif, "image/gif")},
                            headers={"Origin": origin}, timeout=30)
        assert answer.status_code == 204 and answer.headers.get("access-control-allow-origin") == expected, (
            origin, answer.status_code, answer.headers)
    local_stack.graphql("mutation($id: ID!) { deleteImage(id: $id) { __typename } }",
                        {"id": created["image"]["id"]}, local_stack.token("alice"))


# Ports that may answer a foreign origin's CORS preflight, and why that exposes nothing.
CORS_GRANTED_ON_PURPOSE = {
    "SeaweedFS volume": "refuses unsigned writes; a read needs a file id with a random 32-bit cookie",
}


def test_no_other_port_of_the_stack_lets_a_web_page_in(local_stack):
    """A page the user opens in a browser can send requests to loopback ports. None of the stack's
    ports may grant a foreign origin CORS (which would let the page read the answers and send
    AWS-style JSON requests), except the listed ones; dynalite refuses browser requests outright."""
    evil = "http://evil.example"
    granted = {}
    for port, what in declared_ports(local_stack).items():
        try:
            answer = httpx.options(f"http://127.0.0.1:{port}/", timeout=10, headers={
                "Origin": evil, "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type,x-amz-target,authorization"})
        except httpx.HTTPError:
            continue  # not HTTP/1 (gRPC) or not listening: nothing a page can use
        allowed = answer.headers.get("access-control-allow-origin")
        if allowed in ("*", evil) and what not in CORS_GRANTED_ON_PURPOSE:
            granted[f"{what} ({port})"] = allowed
    assert granted == {}, f"ports granting a foreign web page access: {granted}"

    st = local_stack.settings
    page_post = httpx.post(f"http://127.0.0.1:{st.dynamodb_port}/", timeout=10, content=b"{}", headers={
        "Origin": evil, "Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": "DynamoDB_20120810.ListTables"})
    assert page_post.status_code == 403 and "web pages" in page_post.text, page_post.text
    # ... while the SDK (no Origin) is served
    assert st.images_table in client("dynamodb", st).list_tables()["TableNames"]
    # A blind form POST (no CORS needed) to the S3 event bridge would queue a fake upload event.
    fake_event = json.dumps({"event_type": "create", "key": f"/buckets/{st.originals_bucket}/originals/x.jpg"})
    page_post = httpx.post(f"http://127.0.0.1:{st.s3_events_port}/events", timeout=10, content=fake_event,
                           headers={"Origin": evil, "Content-Type": "text/plain"})
    assert page_post.status_code == 403 and "web pages" in page_post.text, page_post.text
    # ... while the filer's webhook (no Origin) is served
    assert httpx.post(f"http://127.0.0.1:{st.s3_events_port}/events", timeout=10, content=b"[]").status_code == 400


# --- network exposure ----------------------------------------------------------------------------


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def stack_listeners(stack: LocalStack) -> dict[tuple[str, int, str], str]:
    """Every listening TCP socket and bound UDP socket of supervisord and all its descendants,
    {(address, port, "tcp"|"udp"): "pid name"}."""
    root = supervisor.running_pid(supervisor.paths(stack.settings))
    assert root, "the local stack's supervisord is not running"
    processes = [psutil.Process(root), *psutil.Process(root).children(recursive=True)]
    # Java, started in its own session by `udagram model serve`, is a descendant too.
    assert any("java" in p.name() for p in processes), [p.name() for p in processes]
    found = {}
    for process in processes:
        try:
            sockets = process.net_connections(kind="inet")
        except psutil.NoSuchProcess:
            continue
        for s in sockets:
            udp = s.type == socket.SOCK_DGRAM
            if s.laddr and (udp or s.status == psutil.CONN_LISTEN):
                found[(s.laddr.ip, s.laddr.port, "udp" if udp else "tcp")] = f"{process.pid} {process.name()}"
    return found


def declared_ports(stack: LocalStack) -> dict[int, str]:
    return {port.port: port.what for program in programs.programs(stack.settings) for port in program.ports}


def non_loopback_addresses() -> list[str]:
    return sorted({a.address for addresses in psutil.net_if_addrs().values() for a in addresses
                   if a.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(a.address)})


def test_every_listener_of_the_stack_is_bound_to_loopback(local_stack):
    listeners = stack_listeners(local_stack)
    exposed = {f"{a}:{p}/{kind}": who for (a, p, kind), who in listeners.items() if not _is_loopback(a)}
    assert exposed == {}, f"listening beyond loopback: {exposed}"
    # the check saw the stack's services, not an empty list
    listening_ports = {p for _, p, kind in listeners if kind == "tcp"}
    st = local_stack.settings
    for port in (st.s3_port, st.sqs_port, st.dynamodb_port, st.s3_events_port, st.api_port, st.api_metrics_port,
                 st.worker_metrics_port, st.torchserve_inference_port, st.torchserve_management_port,
                 st.torchserve_metrics_port):
        assert port in listening_ports, (port, declared_ports(local_stack).get(port), listeners)
    # and every port anything listens on is one the stack declares (and so one `udagram up` checks)
    undeclared = {f"{a}:{p}/{kind}": who for (a, p, kind), who in listeners.items()
                  if p not in declared_ports(local_stack)}
    assert undeclared == {}, f"listeners the stack does not declare: {undeclared}"


def test_no_port_of_the_stack_answers_on_a_non_loopback_address(local_stack, record_property):
    listeners = stack_listeners(local_stack)
    ports = sorted({p for _, p, kind in listeners if kind == "tcp"} | set(declared_ports(local_stack)))
    addresses = non_loopback_addresses()
    record_property("non-loopback addresses", addresses)
    if not addresses:
        exposed = [key for key in listeners if not _is_loopback(key[0])]
        assert exposed == [], (
            "this machine has no non-loopback address to connect from, so only the binding check can "
            f"hold here; and it does not: {exposed}")
        return
    reachable = []
    for address in addresses:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        for port in ports:
            sockaddr = socket.getaddrinfo(address, port, family, socket.SOCK_STREAM)[0][4]
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.settimeout(3)
                try:
                    s.connect(sockaddr)
                except ConnectionRefusedError:
                    continue
                except OSError as exc:  # e.g. a timeout: not refused, so say what happened
                    reachable.append(f"{address} port {port}: {exc!r}")
                else:
                    reachable.append(f"{address} port {port} ({declared_ports(local_stack).get(port, '?')}) ACCEPTED")
    assert reachable == [], f"ports of the stack not refused on {addresses}: {reachable}"
    # the same ports do answer on loopback (so "refused" above means "not exposed", not "down")
    for port in (local_stack.settings.api_port, local_stack.settings.torchserve_management_port):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_torchserve_management_fetches_no_archive_from_a_url(local_stack, tmp_path):
    """The management API runs without tokens on loopback, where any web page the user opens can
    still send it a form POST (no CORS needed to send one). Registering an archive from a URL would
    make TorchServe download and run that archive's code (ShellTorch, CVE-2023-43654), so no URL
    may be fetched: archives are registered by file name from the model store only."""
    hits: list[str] = []

    class Recorder(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            hits.append(self.path)
            self.send_error(404)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    management = local_stack.settings.torchserve_management_url
    models_before = httpx.get(f"{management}/models", timeout=30).json()
    try:
        for url in (f"http://127.0.0.1:{server.server_address[1]}/evil.mar", f"file://{tmp_path}/evil.mar"):
            response = httpx.post(f"{management}/models", params={"url": url, "initial_workers": 1}, timeout=60)
            assert response.status_code >= 400, (url, response.text)
            assert "does not match any allowed URL" in response.text, (url, response.text)
    finally:
        server.shutdown()
        server.server_close()
    assert hits == [], f"TorchServe fetched {hits}"
    assert httpx.get(f"{management}/models", timeout=30).json() == models_before
    # registering by file name from the model store still works (what `udagram model` does)
    archive = next(Path(local_stack.settings.model_store).glob("*.mar")).name
    again = httpx.post(f"{management}/models", params={"url": archive}, timeout=60)
    assert again.status_code in (200, 409) and "allowed URL" not in again.text, again.text


def test_torchserve_management_refuses_a_web_pages_form_post(local_stack):
    """A page the user opens may send a form POST to TorchServe's management port without CORS;
    TorchServe would register the model it names. The port refuses requests carrying what only
    browsers send (Origin, Sec-Fetch-*), and nothing changes; `udagram model` still works."""
    management = local_stack.settings.torchserve_management_url
    before = httpx.get(f"{management}/models", timeout=30).json()
    archive = next(Path(local_stack.settings.model_store).glob("*.mar")).name
    page_post = httpx.post(f"{management}/models?url={archive}&model_name=planted&initial_workers=1&synchronous=true",
                           content=b"", timeout=120, headers={
                               "Origin": "http://evil.example", "Content-Type": "application/x-www-form-urlencoded",
                               "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"})
    assert page_post.status_code == 403 and "refuses browser requests" in page_post.json()["message"], page_post.text
    assert httpx.get(f"{management}/models", timeout=30).json() == before
    listed = subprocess.run([UDAGRAM, "model", "list"], env=local_stack.env, capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and "READY" in listed.stdout, listed.stdout + listed.stderr


# --- GraphQL limits on the running API -----------------------------------------------------------


def test_alias_token_and_body_limits_hold_on_the_running_api(local_stack):
    st = local_stack.settings
    aliases = lambda n: "{ " + " ".join(f"a{i}: me {{ id }}" for i in range(n)) + " }"  # noqa: E731
    assert post(local_stack, aliases(st.max_query_aliases)).json().get("errors") is None
    messages = error_messages(post(local_stack, aliases(st.max_query_aliases + 1)))
    assert f"{st.max_query_aliases + 1} aliases found. Allowed: {st.max_query_aliases}" in messages

    many_tokens = "{ " + "__typename " * (st.max_query_tokens + 1) + "}"
    assert len(many_tokens) < st.max_request_bytes  # the token limit acts, not the body cap
    messages = error_messages(post(local_stack, many_tokens))
    assert any(f"more than {st.max_query_tokens} tokens" in m for m in messages), messages

    too_big = httpx.post(f"{local_stack.api_url}/graphql", timeout=30,
                         json={"query": "{ me { id } }", "variables": {"pad": "x" * st.max_request_bytes}})
    assert too_big.status_code == 413
    assert too_big.json() == {"error": f"request body too large: the limit is {st.max_request_bytes} bytes"}
    chunked = httpx.post(f"{local_stack.api_url}/graphql", headers={"Content-Type": "application/json"},
                         content=iter([b" " * 1024] * (st.max_request_bytes // 1024 + 2)), timeout=30)
    assert chunked.status_code == 413, chunked.text

    batch = httpx.post(f"{local_stack.api_url}/graphql", json=[{"query": "{ me { id } }"}] * 2, timeout=30)
    assert batch.status_code == 400 and "Batching is not enabled" in batch.text
    via_get = httpx.get(f"{local_stack.api_url}/graphql", params={"query": "{ me { id } }"}, timeout=30)
    assert via_get.status_code == 400 and "not allowed when using GET" in via_get.text
    # introspection is outside the depth limiter; graphql-core's own rule bounds its cycles
    cyclic = "{ __schema { types { " + "possibleTypes { interfaces { " * 6 + "name" + " } }" * 6 + " } } }"
    assert "Maximum introspection depth exceeded" in error_messages(post(local_stack, cyclic))
    # fragments each spreading the next twice (~220 tokens): refused by cost at once, before any walk
    response = post(local_stack, fragment_doubling(20))
    assert response.status_code == 200 and response.json()["errors"][0]["extensions"]["code"] == "QUERY_TOO_COSTLY"


def test_api_metrics_are_not_on_the_public_port(local_stack):
    st = local_stack.settings
    assert httpx.get(f"{local_stack.api_url}/metrics", timeout=30).status_code == 404
    metrics = httpx.get(f"http://{st.api_metrics_host}:{st.api_metrics_port}/metrics", timeout=30)
    assert metrics.status_code == 200 and "udagram_dynamodb_calls_total" in metrics.text


@pytest.fixture
def api_with_depth_limit(local_stack: LocalStack, tmp_path: Path):
    """A second `udagram api` process of the same stack (its data servers, its signing key) whose
    depth limit the test sets: the running stack's own API keeps its settings."""
    with ExitStack() as apis:
        yield lambda max_depth: apis.enter_context(
            local_stack.extra_api(tmp_path / f"api-{max_depth}.log", UDAGRAM_MAX_QUERY_DEPTH=str(max_depth)))


def test_depth_limit_holds_on_the_running_api(local_stack, schema, api_with_depth_limit):
    """The deepest query the live schema allows (searched up to one level past the limit) is
    refused if it is over the running API's limit and answered if not; an API process started with
    a limit one below that depth refuses the very same query."""
    limit = local_stack.settings.max_query_depth
    depth, query = schema.deepest_query(cap=limit + 1)
    assert depth >= 4, query
    response = post(local_stack, query)
    if depth > limit:
        assert f"exceeds maximum operation depth of {limit}" in " ".join(error_messages(response))
    else:  # the schema has no cycle reaching past the limit: every valid query is within it
        assert response.status_code == 200 and response.json().get("errors") is None, response.text
    lower = api_with_depth_limit(depth - 1)
    messages = error_messages(post(local_stack, query, url=lower))
    assert any(f"exceeds maximum operation depth of {depth - 1}" in m for m in messages), messages
