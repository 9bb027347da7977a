"""A small graphql-transport-ws client for tests (the `websockets` library's sync client)."""

from __future__ import annotations

import json
import time
from collections import defaultdict, deque
from typing import Any

from websockets.sync.client import connect

PROTOCOL = "graphql-transport-ws"


class GraphQLSocket:
    def __init__(self, url: str, *, origin: str | None = None, timeout: float = 15, **kwargs: Any) -> None:
        self.ws = connect(url, subprotocols=[PROTOCOL], origin=origin, open_timeout=timeout, **kwargs).__enter__()
        self.timeout = timeout
        self.received: list[dict] = []
        self.unread: dict[str | None, deque] = defaultdict(deque)  # by operation id, not yet looked at

    def __enter__(self) -> GraphQLSocket:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.ws.close()

    def send(self, message: dict) -> None:
        self.ws.send(json.dumps(message))

    def init(self, payload: dict | None = None) -> dict:
        self.send({"type": "connection_init", "payload": payload or {}})
        return self.receive()

    def subscribe(self, op_id: str, query: str, variables: dict | None = None) -> None:
        self.send({"id": op_id, "type": "subscribe", "payload": {"query": query, "variables": variables or {}}})

    def receive(self, timeout: float | None = None) -> dict:
        """The next message (answering pings on the way)."""
        while True:
            message = json.loads(self.ws.recv(timeout=timeout or self.timeout))
            if message.get("type") == "ping":
                self.send({"type": "pong"})
                continue
            self.received.append(message)
            return message

    def message_for(self, op_id: str, timeout: float | None = None) -> dict:
        """The next message of operation `op_id` (those of other operations are kept for later)."""
        if self.unread[op_id]:
            return self.unread[op_id].popleft()
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no message for {op_id!r} within the timeout; got {self.received[-5:]}"
            message = self.receive(timeout=left)
            if message.get("id") == op_id:
                return message
            self.unread[message.get("id")].append(message)

    def next_data(self, op_id: str, timeout: float | None = None) -> dict:
        """The data of the next `next` message of `op_id` (fails on its error or complete)."""
        message = self.message_for(op_id, timeout)
        assert message["type"] == "next", message
        assert not message["payload"].get("errors"), message
        return message["payload"]["data"]
