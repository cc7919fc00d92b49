"""How a failed action's error is named in a log line: an API error by its status, not its body."""

from __future__ import annotations

from posegen_operator.kube import ApiError


def describe(error: Exception) -> str:
    if isinstance(error, ApiError):
        return f"{error.status} {error.reason}"
    return f"{type(error).__name__}: {error}"
