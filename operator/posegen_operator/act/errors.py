"""How a failed action's error is named in a log line: an API error by its status, not its headers."""

from __future__ import annotations

from kubernetes.client.exceptions import ApiException


def describe(error: Exception) -> str:
    if isinstance(error, ApiException):
        return f"{error.status} {error.reason}"
    return f"{type(error).__name__}: {error}"
