"""The operator process never loads the ``kubernetes`` client (~18 MiB of imports it does not use):
not through our modules, and not through kopf, which imports it whenever it is installed."""

from __future__ import annotations

import subprocess
import sys

import pytest

LOADED = "[m for m, v in sys.modules.items() if m.split('.')[0] == 'kubernetes' and v is not None]"


@pytest.mark.parametrize(
    "module", ["posegen_operator.__main__", "posegen_operator.runtime", "posegen_operator.handlers"]
)
def test_the_operator_does_not_load_the_kubernetes_client(module: str) -> None:
    code = f"import sys, {module}; print({LOADED})"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert loaded.stdout.strip() == "[]"
