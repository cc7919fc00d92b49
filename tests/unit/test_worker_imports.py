"""A worker starts light: after a mass crash a hundred of them start at once on a couple of cores,
and their import time is most of what each costs before its first pose."""

from __future__ import annotations

import subprocess
import sys

# Loaded by a worker only through its modules' imports, never needed by it: the operator's side.
OPERATOR_ONLY = ("sqlalchemy", "alembic", "kopf", "kubernetes")


def test_a_worker_imports_nothing_of_the_operators_database_layer() -> None:
    # A fresh interpreter: this one has loaded whatever other tests imported.
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, posegen_worker.__main__, posegen_worker.generators.embedded, posegen_worker.generators.flux;"
            " print('\\n'.join(sys.modules))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    assert sorted({name.split(".")[0] for name in loaded} & set(OPERATOR_ONLY)) == []
