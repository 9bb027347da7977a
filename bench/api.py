"""API page queries on the real local stack: latency, requests/s and DynamoDB calls per query.

    .venv/bin/python bench/api.py [--seconds 8]

The web page's own `groups` and `group(id) { images }` queries (graphql_api/static/js/queries.js),
sent over HTTP to the stack's API process:
- p50/p95 latency and requests/s at 1 and 16 concurrent clients (page size 20, the default);
- DynamoDB calls per query for page sizes 5, 20 and 100, read from the API process's own
  counter (`udagram_dynamodb_calls_total` on its metrics port, `api_metrics_port`, incremented by
  PynamoDB's pre-send signal in udagram/data.py): before/after a few queries, nothing else running.
Run standalone it starts its own stack and seeds it (101 groups, a group of 101 images).

    .venv/bin/python bench/api.py --validation

In-process, no stack: the time one document takes to check before execution, for hostile
documents (fragments each spreading the next twice; one field repeated) and the web page's: the
API's limits (graphql_api/schema/limits.py), graphql-core's own validation rules (run only on what
the limits let through), and Strawberry's former QueryDepthLimiter + MaxAliasesLimiter.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.pipeline import GROUP_FIELDS, IMAGE_FIELDS, Api, bench_stack, percentiles_ms, scrape  # noqa: E402
from tests.fixtures.stack import LocalStack  # noqa: E402

GROUPS = f"""query Groups($first: Int, $after: String) {{
  groups(first: $first, after: $after) {{
    edges {{ node {{ {GROUP_FIELDS} }} }} pageInfo {{ hasNextPage endCursor }} }} }}"""
GROUP = f"""query Group($id: ID!, $first: Int, $after: String) {{
  group(id: $id) {{ {GROUP_FIELDS}
    images(first: $first, after: $after) {{
      edges {{ node {{ {IMAGE_FIELDS} }} }} pageInfo {{ hasNextPage endCursor }} }} }} }}"""
PAGE_SIZES = (5, 20, 100)
Say = Callable[[str], None]


def dynamodb_calls(api: Api) -> float:
    return sum(v for k, v in scrape(api.metrics_url).items() if k.startswith("udagram_dynamodb_calls_total{"))


def calls_per_query(api: Api, query: str, variables: dict[str, Any], repeats: int = 5) -> tuple[float, int]:
    """DynamoDB calls per query, and the items on the page (to show the page really grew)."""
    before = dynamodb_calls(api)
    for _ in range(repeats):
        page = api.gql(query, variables)
    calls = (dynamodb_calls(api) - before) / repeats
    connection = page["groups"] if "groups" in page else page["group"]["images"]
    return calls, len(connection["edges"])


def load(stack: LocalStack, query: str, variables: dict[str, Any], clients: int, seconds: float) -> dict[str, Any]:
    apis = [Api(stack, connections=1) for _ in range(clients)]
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def client(api: Api, deadline: float) -> int:
        done = 0
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            try:
                api.gql(query, variables)
            except Exception:  # noqa: BLE001 - counted and reported, the run goes on
                with lock:
                    errors[0] += 1
                continue
            with lock:
                latencies.append(time.perf_counter() - t0)
            done += 1
        return done

    try:
        for api in apis:  # connect and warm
            api.gql(query, variables)
        with ThreadPoolExecutor(clients) as pool:
            start = time.perf_counter()
            total = sum(pool.map(client, apis, [start + seconds] * clients))
            elapsed = time.perf_counter() - start
    finally:
        for api in apis:
            api.close()
    stats = percentiles_ms(latencies)
    return {"clients": clients, "requests": total, "seconds": elapsed, "requests_per_second": total / elapsed,
            "p50_ms": stats["p50"], "p95_ms": stats["p95"], "errors": errors[0],
            "latencies_ms": [round(x * 1000, 2) for x in latencies]}


def seed(api: Api, groups: int, images_group: str | None, images: int, say: Say) -> str:
    """At least `groups` groups and a group with at least `images` image records."""
    say(f"seeding {groups} groups{'' if images_group else f' and a group of {images} images'} ...")
    for n in range(groups):
        api.create_group(f"bench group {n}")
    if images_group is None:
        images_group = api.create_group("bench images")
        for n in range(images):  # records only (AWAITING_UPLOAD): the page lists them all the same
            api.gql("""mutation($g: ID!, $n: String!) { createImage(input: { groupId: $g, caption: $n,
                     contentType: "image/jpeg", contentLength: 1000 }) { __typename } }""",
                    {"g": images_group, "n": f"image {n}"})
    return images_group


def run(stack: LocalStack, seconds: float, say: Say = print, images_group: str | None = None) -> dict[str, Any]:
    api = Api(stack)
    try:
        group_id = seed(api, max(PAGE_SIZES) + 1, images_group, max(PAGE_SIZES) + 1, say)
        queries = {"groups": (GROUPS, {}), "group.images": (GROUP, {"id": group_id})}
        calls = []
        for name, (query, variables) in queries.items():
            for size in PAGE_SIZES:
                per_query, items = calls_per_query(api, query, {**variables, "first": size})
                calls.append({"query": name, "first": size, "items": items, "dynamodb_calls": per_query})
                say(f"  {name} first={size}: {items} items, {per_query:g} DynamoDB calls per query")
        loads = []
        for name, (query, variables) in queries.items():
            for clients in (1, 16):
                say(f"{name} (first=20), {clients} client(s), {seconds:.0f} s ...")
                result = load(stack, query, {**variables, "first": 20}, clients, seconds)
                loads.append({"query": name, "first": 20, **result})
                say(f"  {result['requests_per_second']:.1f} req/s, p50 {result['p50_ms']:.0f} ms, "
                    f"p95 {result['p95_ms']:.0f} ms")
        constant = all(len({c["dynamodb_calls"] for c in calls if c["query"] == name}) == 1 for name in queries)
        return {"calls": calls, "load": loads, "calls_constant": constant}
    finally:
        api.close()


def _best_of(repeats: int, work: Callable[[], Any]) -> float:
    """The fastest of `repeats` runs, in ms (what the code costs, least disturbed by other load)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return best * 1000


def validation(repeats: int = 3, strawberry_max_levels: int = 18) -> list[dict[str, Any]]:
    """Check/validation time of hostile and ordinary documents (see the module's docstring)."""
    from graphql import get_introspection_query, parse, specified_rules, validate
    from strawberry.extensions.max_aliases import create_validator as aliases_rule
    from strawberry.extensions.query_depth_limiter import create_validator as depth_rule

    from graphql_api.schema import build_schema
    from graphql_api.schema.limits import check
    from tests.graphql_api.hostile import fragment_doubling, repeated_field
    from udagram.settings import Settings

    settings = Settings()
    schema = build_schema(settings)._schema
    strawberry_rules = [depth_rule(settings.max_query_depth, None), aliases_rule(settings.max_query_aliases)]
    documents = {f"fragment doubling, {n} levels": (fragment_doubling(n), {}) for n in (10, 14, 18, 20)}
    documents |= {f"me {{ id }} x {n}": (repeated_field(n), {}) for n in (20, 31, 400)}
    documents |= {"web page: group page (first 100)": (GROUP, {"first": 100}),
                  "GraphiQL introspection": (get_introspection_query(descriptions=True), {})}
    rows = []
    for name, (text, variables) in documents.items():
        document = parse(text, max_tokens=settings.max_query_tokens)
        refused = check(schema, document, variables, settings)
        row: dict[str, Any] = {"document": name, "refused_by_limits": [e.message[:70] for e in refused],
                               "limits_ms": _best_of(repeats, partial(check, schema, document, variables, settings))}
        if not refused:  # what graphql-core's rules then cost (refused documents never reach them)
            row["graphql_core_ms"] = _best_of(repeats, partial(validate, schema, document, specified_rules))
        levels = int(name.split(", ")[1].split()[0]) if name.startswith("fragment doubling") else 0
        if levels <= strawberry_max_levels:  # beyond, each level doubles seconds of waiting
            row["strawberry_limiters_ms"] = _best_of(1, partial(validate, schema, document, strawberry_rules))
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--validation", action="store_true", help="only the in-process validation timings")
    args = parser.parse_args()
    if args.validation:
        for row in validation():
            print(json.dumps(row))
        return
    with bench_stack(print) as stack:
        result = run(stack, args.seconds)
    for row in result["load"]:
        row.pop("latencies_ms")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
