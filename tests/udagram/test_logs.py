"""udagram/logs.py: every long-running process logs one JSON object per line on stderr (or plain
text with log_format=console), structlog's lines and standard-library loggers' (uvicorn, botocore)
alike. Fresh interpreters: logging is process-global."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

LOG_SOME = """
import logging, structlog
from udagram import logs
from udagram.settings import Settings

logs.configure(Settings(log_format=sys.argv[1]))
structlog.contextvars.bind_contextvars(image_id="img-1")
structlog.get_logger("workers").info("handled", outcome="done")
logging.getLogger("uvicorn.error").setLevel(logging.INFO)  # what uvicorn's log_level does
logging.getLogger("uvicorn.error").info("Uvicorn running on %s", "http://127.0.0.1:8000")
logging.getLogger("botocore").info("library chatter below warning")
logging.getLogger("botocore").warning("library warning")
print("stdout stays free", flush=True)
"""


def run(log_format: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "import sys\n" + LOG_SOME, log_format],
                          capture_output=True, text=True, timeout=60, check=True)


def test_json_lines_from_structlog_and_standard_loggers() -> None:
    result = run("json")
    assert result.stdout == "stdout stays free\n"
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    assert [(line["level"], line["event"]) for line in lines] == [
        ("info", "handled"),
        ("info", "Uvicorn running on http://127.0.0.1:8000"),
        ("warning", "library warning"),
    ]
    assert lines[0]["image_id"] == "img-1" and lines[0]["outcome"] == "done"
    assert lines[1]["logger"] == "uvicorn.error"
    assert all(line["timestamp"].endswith("Z") for line in lines)


def test_console_format_is_plain_text() -> None:
    lines = run("console").stderr.splitlines()
    assert len(lines) == 3
    assert "handled" in lines[0] and "image_id=img-1" in lines[0]
    assert "Uvicorn running on http://127.0.0.1:8000" in lines[1]
    for line in lines:
        with pytest.raises(json.JSONDecodeError):
            json.loads(line)
