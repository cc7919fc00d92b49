"""``python -m posegen_worker``: run one attempt of one generation (inputs from the environment)."""

from __future__ import annotations

import logging
import sys

from posegen_common.logs import configure_logging
from posegen_worker import faults
from posegen_worker.run import run
from posegen_worker.settings import SettingsError, WorkerSettings


def main() -> None:
    try:
        settings = WorkerSettings.from_env()
    except SettingsError as error:
        # Logging is not configured yet: the line goes to stderr as it is.
        code, cause = faults.classify(error)
        faults.report(code, cause)
        sys.exit(code)
    configure_logging(
        settings.log_format,
        component="worker",
        context={"generation": settings.generation_id, "attempt": settings.attempt},
    )
    try:
        code = run(settings)
    except Exception as error:
        logging.getLogger("posegen.worker").exception("worker failed")
        code, cause = faults.classify(error)
        faults.report(code, cause)
    sys.exit(code)


if __name__ == "__main__":
    main()
