"""The services beside the control plane: Postgres, Redis and Prometheus, each on loopback with its
data under the state directory."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

import psycopg2
import redis
import yaml

from posegen_devstack.layout import DATABASE, DB_USER, REPO_ROOT, Layout, prometheus_bin_dir
from posegen_devstack.processes import StackError, http_get, wait_until


def start_postgres(layout: Layout) -> None:
    data = layout.state_dir / "postgres"
    bin_dir = _postgres_bin_dir()
    user = "postgres" if os.geteuid() == 0 else None
    if not (data / "PG_VERSION").exists():
        data.mkdir(parents=True, exist_ok=True)
        if user:
            shutil.chown(data, user, user)
        subprocess.run(
            [f"{bin_dir}/initdb", "-D", str(data), "-U", DB_USER, "--auth=trust", "-E", "UTF8", "--no-sync"],
            check=True,
            capture_output=True,
            user=user,
            group=user,
        )
    port = layout.config.ports.postgres
    layout.start(
        "postgres",
        [
            f"{bin_dir}/postgres",
            "-D",
            str(data),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-k",
            "",
            "-c",
            "max_connections=300",
            "-c",
            "shared_buffers=128MB",
        ],
        user=user,
    )
    wait_until(lambda: _pg_ready(port), timeout=60, what="postgres", log=layout.log("postgres"))
    conn = psycopg2.connect(host="127.0.0.1", port=port, user=DB_USER, dbname="postgres", connect_timeout=5)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
            if cur.fetchone() is None:
                cur.execute(f"CREATE DATABASE {DATABASE}")
    finally:
        conn.close()


def start_redis(layout: Layout) -> None:
    data = layout.state_dir / "redis"
    data.mkdir(exist_ok=True)
    port = layout.config.ports.redis
    layout.start(
        "redis",
        [
            shutil.which("redis-server") or "/usr/bin/redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data),
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
        ],
    )
    client = redis.Redis(port=port, socket_timeout=2)
    wait_until(lambda: bool(client.ping()), timeout=30, what="redis", log=layout.log("redis"))


def start_prometheus(layout: Layout) -> None:
    data = layout.state_dir / "prometheus"
    data.mkdir(exist_ok=True)
    ports = layout.config.ports
    config = {
        "global": {"scrape_interval": "5s", "evaluation_interval": "5s"},
        "rule_files": [str(REPO_ROOT / "deploy" / "prometheus" / "*.rules.yml")],
        "scrape_configs": [
            {"job_name": "prometheus", "static_configs": [{"targets": [f"127.0.0.1:{ports.prometheus}"]}]},
            {"job_name": "posegen-operator", "static_configs": [{"targets": [f"127.0.0.1:{ports.operator_metrics}"]}]},
        ],
    }
    (data / "prometheus.yml").write_text(yaml.safe_dump(config))
    layout.start(
        "prometheus",
        [
            f"{prometheus_bin_dir()}/prometheus",
            f"--config.file={data / 'prometheus.yml'}",
            f"--storage.tsdb.path={data / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{ports.prometheus}",
            "--web.enable-lifecycle",
            "--storage.tsdb.retention.time=1d",
        ],
    )
    wait_until(
        lambda: b"Ready" in http_get(f"{layout.prometheus_url}/-/ready"),
        timeout=60,
        what="prometheus",
        log=layout.log("prometheus"),
    )


def _postgres_bin_dir() -> str:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=_version_key)
    if not candidates:
        raise StackError("Postgres is not installed: run `make system-deps`")
    return str(Path(candidates[-1]).parent)


def _version_key(path: str) -> int:
    try:
        return int(Path(path).parts[4])
    except (ValueError, IndexError):
        return 0


def _pg_ready(port: int) -> bool:
    psycopg2.connect(host="127.0.0.1", port=port, user=DB_USER, dbname="postgres", connect_timeout=2).close()
    return True
