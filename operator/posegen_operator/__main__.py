"""``python -m posegen_operator``: settings first (fail fast), then kopf runs the handlers."""

from __future__ import annotations

import asyncio
import sys

import kopf

from posegen_common.logs import configure_logging
from posegen_operator import handlers, login  # noqa: F401 - register the kopf handlers and how kopf logs in
from posegen_operator.settings import Settings, SettingsError


def main() -> None:
    try:
        settings = Settings.from_env()
    except SettingsError as error:
        sys.exit(f"posegen-operator: {error}")
    configure_logging(settings.log_format, component="operator")
    asyncio.run(
        kopf.operator(
            clusterwide=not settings.namespaces,
            namespaces=list(settings.namespaces),
            standalone=True,
            liveness_endpoint=f"http://0.0.0.0:{settings.probe_port}/healthz",
            memo=kopf.Memo(settings=settings),
        )
    )


if __name__ == "__main__":
    main()
