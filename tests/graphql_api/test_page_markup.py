"""The page's markup: every view the router shows or hides is its own child of <main>.

A view nested in another (an end tag lost in a merge once put the search results inside the
hidden admin view) stays invisible whatever the router does.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

PAGE = Path(__file__).resolve().parents[2] / "graphql_api" / "static" / "index.html"
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class _Tree(HTMLParser):
    """Records, for each element with an id, the chain of its ancestors' tags and ids."""

    def __init__(self) -> None:
        super().__init__()
        self.open: list[tuple[str, str | None]] = []
        self.parents: dict[str, list[tuple[str, str | None]]] = {}
        self.mismatches: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element_id = dict(attrs).get("id")
        if element_id:
            self.parents[element_id] = list(self.open)
        if tag not in VOID:
            self.open.append((tag, element_id))

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        if not self.open or self.open[-1][0] != tag:
            self.mismatches.append(f"</{tag}> closes {self.open[-1] if self.open else 'nothing'}")
            return
        self.open.pop()


def test_page_tags_are_balanced_and_each_view_is_a_child_of_main() -> None:
    markup = PAGE.read_text(encoding="utf-8")
    tree = _Tree()
    tree.feed(markup)
    assert tree.mismatches == [] and tree.open == []
    router = (PAGE.parent / "js" / "router.js").read_text(encoding="utf-8")
    views = set(re.findall(r'\$\("([a-z-]+-view)"\)', router))
    assert {"groups-view", "group-view", "admin-view", "search-view"} <= views
    for view in views:
        assert tree.parents[view][-1][0] == "main", (view, tree.parents[view])
