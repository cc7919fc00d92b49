"""The operator's parts, built once from the settings and started/stopped together."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import redis
from aiohttp import web
from prometheus_client import start_http_server
from sqlalchemy import Engine

from posegen_common.database import create_db_engine, migrate_in_child
from posegen_operator.act import PARALLEL_RESOURCES
from posegen_operator.api import ApiContext, build_app, ssl_context
from posegen_operator.controller import Controller
from posegen_operator.expiry import HeartbeatExpiryWatcher
from posegen_operator.kube import KubeClient, load_config
from posegen_operator.leader import LeaderElector
from posegen_operator.metrics import Metrics
from posegen_operator.pod_watch import PodWatch
from posegen_operator.settings import Settings

log = logging.getLogger("posegen.operator")


def api_client(settings: Settings) -> KubeClient:
    """One client for every thread: in a pod its service account, elsewhere $KUBECONFIG."""
    # A connection kept for each thread that may be in a request at once: the acting threads, the
    # loop, the lease, the Event sink, the API; and each pod watch, which holds its own open.
    watches = len(settings.namespaces) or 1
    return KubeClient(load_config(), connections=PARALLEL_RESOURCES + 4 + watches)


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    redis: redis.Redis
    api: KubeClient
    metrics: Metrics
    controller: Controller
    expiry: HeartbeatExpiryWatcher
    pods: PodWatch
    runner: web.AppRunner | None = None

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        engine = create_db_engine(
            settings.database_url, application_name="posegen-operator", pool_size=PARALLEL_RESOURCES
        )
        redis_client = redis.Redis.from_url(
            settings.redis_url, socket_timeout=3, socket_connect_timeout=3, health_check_interval=30
        )
        api = api_client(settings)
        metrics = Metrics()
        elector = LeaderElector(
            api,
            name=settings.lease_name,
            namespace=settings.lease_namespace,
            identity=settings.identity,
            enabled=settings.leader_election,
        )
        controller = Controller(settings, api, engine, redis_client, metrics, elector)
        # A heartbeat that expires wakes the controller at once (the pass decides if it is a hang).
        expiry = HeartbeatExpiryWatcher(redis_client, controller.heartbeat_expired)
        pods = PodWatch(api, settings.namespaces, controller.cache, controller.notify)
        return cls(settings, engine, redis_client, api, metrics, controller, expiry, pods)

    async def start(self) -> None:
        if self.settings.migrate_on_start:
            await asyncio.to_thread(migrate_in_child, self.settings.database_url)
            log.info("database schema is up to date")
        start_http_server(self.settings.metrics_port, registry=self.metrics.registry)
        context = ApiContext(
            self.settings,
            self.controller,
            self.engine,
            self.redis,
            self.api,
            self.metrics,
            default_namespace=self.settings.namespaces[0] if self.settings.namespaces else "default",
        )
        self.runner = web.AppRunner(build_app(context), access_log=None)
        await self.runner.setup()
        site = web.TCPSite(
            self.runner, self.settings.api_host, self.settings.api_port, ssl_context=ssl_context(self.settings)
        )
        await site.start()
        log.info(
            "admin API on %s:%d, metrics on :%d",
            self.settings.api_host,
            self.settings.api_port,
            self.settings.metrics_port,
        )
        self.pods.start()
        self.controller.start()
        self.expiry.start()

    async def stop(self) -> None:
        self.expiry.stop()
        await asyncio.to_thread(self.pods.stop)
        await asyncio.to_thread(self.controller.stop)
        if self.runner is not None:
            await self.runner.cleanup()
        self.engine.dispose()
        self.api.close()
