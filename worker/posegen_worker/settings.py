"""The worker's settings: one typed object read once from the environment the operator sets."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import psycopg2.extensions
from redis.connection import parse_url

from posegen_common.sessions import URL_SCHEMES


class SettingsError(ValueError):
    """A missing or malformed environment variable; the worker exits at once with this message."""


def _env(name: str, default: str | None = None) -> str:
    value = os.environ.get(name, default)
    if value is None or value == "":
        raise SettingsError(f"{name} must be set")
    return value


def _number(name: str, default: str, minimum: float) -> float:
    raw = _env(name, default)
    try:
        value = float(raw)
    except ValueError as error:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from error
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, got {value}")
    return value


def _database_url() -> str:
    url = _env("DATABASE_URL")
    try:
        psycopg2.extensions.parse_dsn(url)  # what libpq will connect with
    except psycopg2.ProgrammingError:
        valid = False  # libpq's message would quote the URL, password included
    else:
        valid = url.startswith(URL_SCHEMES)  # not key=value pairs
    if not valid:
        raise SettingsError("DATABASE_URL must be a postgresql:// URL")
    return url


def _redis_url() -> str:
    url = _env("REDIS_URL")
    try:
        parse_url(url)  # type: ignore[no-untyped-call]
    except ValueError as error:  # says what is wrong without quoting the URL
        raise SettingsError(f"REDIS_URL is not a Redis URL: {error}") from error
    return url


@dataclass(frozen=True)
class WorkerSettings:
    generation_id: str
    attempt: int
    database_url: str
    redis_url: str
    output_dir: Path
    pod_name: str
    generator: str
    pose_seconds: float
    flux_url: str | None
    flux_api_key: str | None
    flux_timeout: float
    flux_max_attempts: int
    heartbeat_ttl: float
    heartbeat_interval: float
    dependency_retry_seconds: float  # how long an unreachable Postgres is waited for
    log_format: str

    @classmethod
    def from_env(cls) -> WorkerSettings:
        generator = _env("POSEGEN_GENERATOR", "embedded")
        if generator not in ("embedded", "flux"):
            raise SettingsError(f"POSEGEN_GENERATOR must be embedded or flux, got {generator!r}")
        flux_url = os.environ.get("FLUX_API_URL") or None
        flux_api_key = os.environ.get("FLUX_API_KEY") or None
        if generator == "flux" and (flux_url is None or flux_api_key is None):
            raise SettingsError("FLUX_API_URL and FLUX_API_KEY must be set when POSEGEN_GENERATOR=flux")
        ttl = _number("POSEGEN_HEARTBEAT_TTL_SECONDS", "15", 1)
        interval = _number("POSEGEN_HEARTBEAT_INTERVAL_SECONDS", str(max(1.0, ttl / 5)), 0.1)
        if interval >= ttl:
            raise SettingsError("POSEGEN_HEARTBEAT_INTERVAL_SECONDS must be below the heartbeat TTL")
        attempt_raw = _env("POSEGEN_ATTEMPT")
        if not attempt_raw.isdigit():
            raise SettingsError(f"POSEGEN_ATTEMPT must be a positive integer, got {attempt_raw!r}")
        return cls(
            generation_id=_env("POSEGEN_GENERATION_ID"),
            attempt=int(attempt_raw),
            database_url=_database_url(),
            redis_url=_redis_url(),
            output_dir=Path(_env("POSEGEN_OUTPUT_DIR")),
            pod_name=os.environ.get("POSEGEN_POD_NAME") or os.environ.get("HOSTNAME", "worker"),
            generator=generator,
            pose_seconds=_number("POSEGEN_POSE_SECONDS", "0.6", 0),
            flux_url=flux_url,
            flux_api_key=flux_api_key,
            flux_timeout=_number("POSEGEN_FLUX_TIMEOUT_SECONDS", "30", 0.1),
            flux_max_attempts=int(_number("POSEGEN_FLUX_MAX_ATTEMPTS", "5", 1)),
            heartbeat_ttl=ttl,
            heartbeat_interval=interval,
            # The operator passes its stall timeout; 600 s is its default.
            dependency_retry_seconds=_number("POSEGEN_DEPENDENCY_RETRY_SECONDS", "600", 0),
            log_format=_env("POSEGEN_LOG_FORMAT", "text"),
        )
