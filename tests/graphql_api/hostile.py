"""Small GraphQL documents that cost a server far more than their size, for the limit tests
(tests/graphql_api/test_limits.py, tests/e2e/test_security.py) and the validation benchmark
(bench/api.py --validation)."""

from __future__ import annotations


def fragment_doubling(levels: int, leaf: str = "id name") -> str:
    """Fragments that each spread the next one twice: 2^levels paths in ~11 tokens a level (the
    outside test's document had 20 levels, ~220 tokens)."""
    fragments = [f"fragment F{i} on Group {{ ...F{i + 1} ...F{i + 1} }}" for i in range(levels)]
    fragments.append(f"fragment F{levels} on Group {{ {leaf} }}")
    return "{ groups { edges { node { ...F0 } } } } " + " ".join(fragments)


def repeated_field(times: int) -> str:
    """`{ me { id } me { id } ... }`: graphql-core compares every pair of the repeated fields."""
    return "{" + " me { id }" * times + " }"
