"""Logs: the seed's lines in text, or JSON lines that carry generation, attempt and reason."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from posegen_common.logs import configure_logging


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


def test_json_lines_carry_generation_attempt_and_reason(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", component="operator", context={"replica": "a"})
    logging.getLogger("posegen.operator").info(
        "[Recovery] Recovering generation %s (%d/%d completed)",
        "g1",
        15,
        50,
        extra={"generation": "g1", "attempt": 2, "reason": "Crashed"},
    )
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["message"] == "[Recovery] Recovering generation g1 (15/50 completed)"
    assert (line["generation"], line["attempt"], line["reason"]) == ("g1", 2, "Crashed")
    assert (line["component"], line["replica"], line["level"]) == ("operator", "a", "info")


def test_text_lines_read_like_the_seed(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("text", component="worker", context={"generation": "g1", "attempt": 2})
    logging.getLogger("posegen.worker").info("RECOVERY MODE: resuming generation g1 at 15/50")
    out = capsys.readouterr().out
    assert "[worker generation=g1 attempt=2] RECOVERY MODE: resuming generation g1 at 15/50" in out
