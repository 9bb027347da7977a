"""`udagram token` and `udagram api` as a user runs them (subprocesses)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jwt

from graphql_api import auth
from tests.fixtures.ports import free_port
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


def test_token_refuses_a_bad_user_name(tmp_path):
    result = subprocess.run([UDAGRAM, "token", "--user", "no spaces"], capture_output=True, text=True,
                            timeout=120, env=_env(UDAGRAM_DATA_DIR=str(tmp_path)))
    assert result.returncode == 2 and result.stdout == "" and "invalid --user" in result.stderr


def test_api_command_creates_resources_and_serves(moto_server, tmp_path):
    """`udagram api` against the moto server: tables/buckets/queues made, /healthz answers, a token
    from `udagram token` (same data dir) can create a group over real HTTP, and the metrics port
    counts the DynamoDB calls."""
    port, metrics_port = free_port(), free_port()
    env = _env(
        UDAGRAM_DATA_DIR=str(tmp_path), UDAGRAM_API_PORT=str(port), UDAGRAM_API_METRICS_PORT=str(metrics_port),
        AWS_ENDPOINT_URL=moto_server,
        UDAGRAM_GROUPS_TABLE="cli-groups", UDAGRAM_IMAGES_TABLE="cli-images",
        UDAGRAM_ORIGINALS_BUCKET="cli-originals", UDAGRAM_PROCESSED_BUCKET="cli-processed",
        UDAGRAM_QUEUE_NAME="cli-uploads", UDAGRAM_DEAD_LETTER_QUEUE_NAME="cli-uploads-dlq",
    )
    log = tmp_path / "api.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([UDAGRAM, "api"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.3)
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
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
