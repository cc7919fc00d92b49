"""The operator's own Kubernetes API client: a few REST calls on urllib3, plain dicts in and out.

The ``kubernetes`` package would cost the operator ~18 MiB of imports (its generated models,
pydantic, websocket, google-auth) for the handful of requests it makes."""

from posegen_operator.kube.client import MERGE_PATCH, ApiError, KubeClient, lines, release, resource_path
from posegen_operator.kube.config import KubeConfig, KubeConfigError, load_config

__all__ = [
    "MERGE_PATCH",
    "ApiError",
    "KubeClient",
    "KubeConfig",
    "KubeConfigError",
    "lines",
    "load_config",
    "release",
    "resource_path",
]
