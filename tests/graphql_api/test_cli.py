"""`udagram token`, `udagram user` and `udagram api` as a user runs them (subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jwt

from graphql_api import accounts, auth
from tests.fixtures.aws import TEST_KEYS, server_process, udagram_api, wait_until_answers
from tests.fixtures.ports import free_port
from tests.fixtures.stack import settings_from
from tests.graphql_api.oidc_flow import PASSWORD, tokens_for
from udagram import data
from udagram.settings import Settings

UDAGRAM = str(Path(sys.executable).parent / "udagram")


def _env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UDAGRAM_", "AWS_"))}
    env.update(values)
    return env


def test_token_prints_only_a_valid_token(tmp_path):
    result = subprocess.run([UDAGRAM, "token", "--user", "alice"], capture_output=True, text=True, timeout=120,
                            env=_env(UDAGRAM_DATA_DIR=str(tmp_path)))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    settings = Settings(data_dir=tmp_path)
    assert auth.TokenVerifier(settings).verify(lines[0]).id == "alice"
    assert jwt.decode(lines[0], options={"verify_signature": False})["aud"] == settings.auth_audience


def test_token_with_admin_has_the_admin_role_and_without_none(tmp_path):
    settings = Settings(data_dir=tmp_path)
    users = {}
    for args in ([], ["--admin"]):
        result = subprocess.run([UDAGRAM, "token", "--user", "root", *args], capture_output=True, text=True,
                                timeout=120, env=_env(UDAGRAM_DATA_DIR=str(tmp_path)))
        assert result.returncode == 0, result.stderr
        users[tuple(args)] = auth.TokenVerifier(settings).verify(result.stdout.strip())
    assert users[()] == auth.User(id="root", roles=()) and not users[()].is_admin
    assert users[("--admin",)] == auth.User(id="root", roles=("admin",)) and users[("--admin",)].is_admin


def test_token_refuses_a_bad_user_name(tmp_path):
    result = subprocess.run([UDAGRAM, "token", "--user", "no spaces"], capture_output=True, text=True,
                            timeout=120, env=_env(UDAGRAM_DATA_DIR=str(tmp_path)))
    assert result.returncode == 2 and result.stdout == "" and "invalid --user" in result.stderr


def _moto_env(moto_server: str, tmp_path: Path, **values: str) -> dict[str, str]:
    suffix = tmp_path.name[-12:].replace("_", "-").lower()
    return _env(
        UDAGRAM_DATA_DIR=str(tmp_path), AWS_ENDPOINT_URL=moto_server,
        # the moto server takes any keys; local mode has no fixed ones (they come from `udagram up`)
        AWS_ACCESS_KEY_ID=TEST_KEYS["accessKeyId"], AWS_SECRET_ACCESS_KEY=TEST_KEYS["secretAccessKey"],
        UDAGRAM_GROUPS_TABLE=f"cli-groups-{suffix}", UDAGRAM_IMAGES_TABLE=f"cli-images-{suffix}",
        UDAGRAM_USERS_TABLE=f"cli-users-{suffix}", UDAGRAM_AUTH_GRANTS_TABLE=f"cli-grants-{suffix}",
        UDAGRAM_RATE_LIMITS_TABLE=f"cli-limits-{suffix}",
        UDAGRAM_ORIGINALS_BUCKET=f"cli-originals-{suffix}", UDAGRAM_PROCESSED_BUCKET=f"cli-processed-{suffix}",
        UDAGRAM_QUEUE_NAME=f"cli-uploads-{suffix}", UDAGRAM_DEAD_LETTER_QUEUE_NAME=f"cli-uploads-dlq-{suffix}",
        **values,
    )


def _user(env: dict[str, str], *args: str, password: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([UDAGRAM, "user", *args], input=password, capture_output=True, text=True, timeout=120,
                          env=env)


def test_user_commands_add_list_grant_remove(moto_server, tmp_path):
    env = _moto_env(moto_server, tmp_path)
    added = _user(env, "add", "alice", password=PASSWORD + "\n")  # one line on stdin, as a script sends it
    assert added.returncode == 0 and added.stdout.strip() == "created alice (admin)", added.stderr
    assert _user(env, "add", "bob", password=PASSWORD).stdout.strip() == "created bob"
    weak = _user(env, "add", "carol", password="short\n")
    assert weak.returncode == 1 and "the password is too short" in weak.stderr and weak.stdout == ""
    empty = _user(env, "add", "carol", password="")
    assert empty.returncode == 1 and "the password is empty" in empty.stderr
    taken = _user(env, "add", "alice", password=PASSWORD)
    assert taken.returncode == 1 and "already an account named 'alice'" in taken.stderr

    listed = [line.split("\t")[:2] for line in _user(env, "list").stdout.splitlines()]
    assert listed == [["alice", "admin"], ["bob", "-"]]
    assert _user(env, "grant", "bob", "admin").returncode == 0
    assert [line.split("\t")[:2] for line in _user(env, "list").stdout.splitlines()] == [
        ["alice", "admin"], ["bob", "admin"]]
    assert _user(env, "remove", "bob").stdout.strip() == "removed bob"
    missing = _user(env, "remove", "bob")
    assert missing.returncode == 1 and "no account named 'bob'" in missing.stderr
    # the password from stdin is the one that signs in (the trailing newline is not part of it)
    data.configure(settings_from(env))
    assert accounts.authenticate("alice", PASSWORD) is not None


def test_user_commands_need_the_built_in_provider(tmp_path):
    env = _env(UDAGRAM_DATA_DIR=str(tmp_path), UDAGRAM_AUTH_ISSUER="https://tenant.example.auth0.com/")
    refused = _user(env, "add", "alice", password=PASSWORD)
    assert refused.returncode == 2 and "accounts live at your identity provider" in refused.stderr
    token = subprocess.run([UDAGRAM, "token", "--user", "alice"], capture_output=True, text=True, timeout=120, env=env)
    assert token.returncode == 2 and token.stdout == ""


def test_api_command_creates_resources_and_serves(moto_server, tmp_path):
    """`udagram api` against the moto server: tables/buckets/queues made, /healthz answers; a token
    from `udagram token` (same data dir) can create a group over real HTTP, the metrics port counts
    the DynamoDB calls, and an account made with `udagram user add` signs in with its password
    (code flow with PKCE) and writes."""
    port, metrics_port = free_port(), free_port()
    env = _moto_env(moto_server, tmp_path, UDAGRAM_API_PORT=str(port), UDAGRAM_API_METRICS_PORT=str(metrics_port))
    with udagram_api(env, tmp_path / "api.log") as base:
        token = subprocess.run([UDAGRAM, "token", "--user", "carol"], capture_output=True, text=True,
                               timeout=120, env=env, check=True).stdout.strip()
        response = httpx.post(f"{base}/graphql", headers={"Authorization": f"Bearer {token}"}, timeout=30, json={
            "query": 'mutation { createGroup(input: {name: "via cli"}) { ... on Group { owner name } } }'})
        assert response.json() == {"data": {"createGroup": {"owner": "carol", "name": "via cli"}}}
        # the JWKS the API serves is the one the token was signed with
        kid = jwt.get_unverified_header(token)["kid"]
        assert kid in [k["kid"] for k in httpx.get(f"{base}/.well-known/jwks.json").json()["keys"]]
        # metrics on their own loopback listener (the DynamoDB calls made above), none on the public app
        assert httpx.get(f"{base}/metrics", timeout=10).status_code == 404
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        assert 'udagram_dynamodb_calls_total{operation="PutItem"} 1.0' in metrics, metrics

        assert _user(env, "add", "dora", password=PASSWORD).returncode == 0
        with httpx.Client(base_url=base, timeout=30) as client:
            access = tokens_for(client, settings_from(env), "dora")["access_token"]
            response = client.post("/graphql", headers={"Authorization": f"Bearer {access}"}, json={
                "query": "{ me { id roles } }"})
            assert response.json() == {"data": {"me": {"id": "dora", "roles": ["admin"]}}}
    # settings.log_format (json by default): uvicorn's lines too, through udagram.logs
    lines = [json.loads(line) for line in (tmp_path / "api.log").read_text().splitlines()]
    assert any(line["event"].startswith("Uvicorn running on") and line["logger"] == "uvicorn.error"
               for line in lines), lines
    assert any(line["logger"] == "uvicorn.access" and "POST /graphql" in line["event"] for line in lines), lines


def test_api_waits_for_unreachable_services_then_serves_once_they_answer(tmp_path):
    """As in the compose file, where every service starts at once: `udagram api` keeps retrying
    while S3/SQS/DynamoDB do not answer (instead of exiting), and serves once they do."""
    port = free_port()  # moto starts here only after the API has tried it
    endpoint = f"http://127.0.0.1:{port}"
    env = _env(UDAGRAM_DATA_DIR=str(tmp_path), UDAGRAM_API_PORT=str(free_port()),
               UDAGRAM_API_METRICS_PORT=str(free_port()), AWS_ENDPOINT_URL_S3=endpoint,
               AWS_ENDPOINT_URL_SQS=endpoint, AWS_ENDPOINT_URL_DYNAMODB=endpoint,
               AWS_ACCESS_KEY_ID=TEST_KEYS["accessKeyId"], AWS_SECRET_ACCESS_KEY=TEST_KEYS["secretAccessKey"])
    log = tmp_path / "api.log"
    with server_process([UDAGRAM, "api"], log, None, "udagram api", env=env) as api:
        deadline = time.monotonic() + 120
        while "AWS services not ready; retrying" not in log.read_text():
            assert api.poll() is None, log.read_text()  # waiting, not exited
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        moto = [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
        with server_process(moto, tmp_path / "moto.log", f"{endpoint}/moto-api/", "moto_server"):
            wait_until_answers(f"http://127.0.0.1:{env['UDAGRAM_API_PORT']}/healthz", api, 120, "udagram api", log)
