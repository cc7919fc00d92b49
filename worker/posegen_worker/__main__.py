"""``python -m posegen_worker``: run one attempt of one generation (inputs from the environment)."""

from __future__ import annotations

import logging
import sys

from posegen_common.exit_codes import ExitCode
from posegen_common.logs import configure_logging
from posegen_worker.run import run
from posegen_worker.settings import SettingsError, WorkerSettings


def main() -> None:
    try:
        settings = WorkerSettings.from_env()
    except SettingsError as error:
        print(f"posegen-worker: {error}", file=sys.stderr)
        sys.exit(ExitCode.SETTINGS)
    configure_logging(
        settings.log_format,
        component="worker",
        context={"generation": settings.generation_id, "attempt": settings.attempt},
    )
    try:
        code = run(settings)
    except Exception:
        logging.getLogger("posegen.worker").exception("worker failed")
        code = ExitCode.FAILED
    sys.exit(code)


if __name__ == "__main__":
    main()
