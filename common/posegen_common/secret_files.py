"""Credentials from the environment or from files: NAME holds the value itself, or NAME_FILE names a
file holding it (a mounted Secret, so the value is in no process environment nor pod spec)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


def secret_value(environ: Mapping[str, str], name: str) -> str | None:
    """NAME's value, else the contents of the file NAME_FILE names (trailing newline dropped); None
    when neither is set, or the file is absent (an optional key of a mounted Secret)."""
    value = environ.get(name)
    if value:
        return value
    path = environ.get(f"{name}_FILE")
    if not path:
        return None
    try:
        return Path(path).read_text().rstrip("\r\n") or None
    except FileNotFoundError:
        return None
