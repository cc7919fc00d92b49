"""Prometheus metrics. Every gauge is computed once per reconcile pass from its batched reads, so
a scrape costs the same with ten resources or ten thousand."""

from __future__ import annotations

from importlib import metadata

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from posegen_operator.model import Reason

PREFIX = "posegen"
RECOVERY_REASONS = tuple(str(reason) for reason in Reason)
LATENCY_BUCKETS = (0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 120, 300, 600, 1800)
DURATION_BUCKETS = (10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)
PASS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class Metrics:
    """One registry per process (tests make their own)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.generations = Gauge(f"{PREFIX}_generations", "PoseGeneration resources by phase.", ["phase"], registry=r)
        self.stalled = Gauge(
            f"{PREFIX}_stalled_generations",
            "Processing generations with no new pose for longer than the stall timeout "
            "(the seed's stalledGenerations).",
            registry=r,
        )
        self.queued = Gauge(
            f"{PREFIX}_queued_generations",
            "Generations waiting for a worker slot (the seed's queuedGenerations).",
            registry=r,
        )
        self.processing = Gauge(
            f"{PREFIX}_processing_generations",
            "Generations with a worker (the seed's processingGenerations).",
            registry=r,
        )
        self.oldest_processing_age = Gauge(
            f"{PREFIX}_oldest_processing_age_seconds",
            "MAX(NOW() - started_at) over processing generations (the seed's Processing Time).",
            registry=r,
        )
        self.recoveries = Counter(
            f"{PREFIX}_recoveries_total",
            "Recovery decisions by cause and result (recovered or failed).",
            ["reason", "result"],
            registry=r,
        )
        self.recovery_latency = Histogram(
            f"{PREFIX}_recovery_latency_seconds",
            "From a worker's crash (or the detection of a hang or stall) to the next recorded pose.",
            ["reason"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.poses_recorded = Counter(
            f"{PREFIX}_poses_recorded_total", "Poses recorded, as the operator saw them.", registry=r
        )
        self.generation_duration = Histogram(
            f"{PREFIX}_generation_duration_seconds",
            "From a generation's start to its completion.",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.pass_duration = Histogram(
            f"{PREFIX}_reconcile_pass_duration_seconds",
            "One observe-plan-act pass, by what triggered it.",
            ["trigger"],
            buckets=PASS_BUCKETS,
            registry=r,
        )
        self.last_sweep = Gauge(
            f"{PREFIX}_last_sweep_timestamp_seconds", "Unix time of the last completed recovery sweep.", registry=r
        )
        self.last_pass = Gauge(
            f"{PREFIX}_last_pass_timestamp_seconds", "Unix time of the last completed reconcile pass.", registry=r
        )
        self.leader = Gauge(f"{PREFIX}_leader", "1 while this replica is the active one.", registry=r)
        self.admin_requests = Counter(
            f"{PREFIX}_admin_requests_total", "Admin and seed API requests.", ["path", "code"], registry=r
        )
        self.action_errors = Counter(
            f"{PREFIX}_action_errors_total", "Actions that failed and will be retried.", ["action"], registry=r
        )
        self.events_dropped = Counter(
            f"{PREFIX}_events_dropped_total", "Events not posted because the Event queue was full.", registry=r
        )
        self.invalid_objects = Counter(
            f"{PREFIX}_invalid_objects_total",
            "Objects skipped because they are malformed (each object and fault counted once).",
            ["kind"],
            registry=r,
        )
        self.dependency_up = Gauge(
            f"{PREFIX}_dependency_up", "1 while the operator reaches the dependency.", ["dependency"], registry=r
        )
        self.build_info = Gauge(f"{PREFIX}_build_info", "The running operator's version.", ["version"], registry=r)
        self.build_info.labels(version=_version()).set(1)
        # Every labelled series exists from the start at 0, so rate() sees each first event.
        for kind in ("generations", "pods"):
            self.invalid_objects.labels(kind=kind)
        for dependency in ("database", "redis"):
            self.dependency_up.labels(dependency=dependency).set(1)
        for reason in RECOVERY_REASONS:
            self.recovery_latency.labels(reason=reason)
            for result in ("recovered", "failed"):
                self.recoveries.labels(reason=reason, result=result)


def _version() -> str:
    try:
        return metadata.version("posegen-operator")
    except metadata.PackageNotFoundError:
        return "unknown"
