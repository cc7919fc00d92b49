"""The image registry on loopback (distribution v3, plain HTTP): `make images` pushes the project's
images here and containerd pulls them, as from any registry."""

from __future__ import annotations

import yaml

from posegen_devstack.layout import Layout
from posegen_devstack.processes import http_get, wait_until


def start_registry(layout: Layout) -> None:
    data = layout.state_dir / "registry"
    data.mkdir(exist_ok=True)
    config = {
        "version": 0.1,
        "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(data / "storage")}, "delete": {"enabled": True}},
        "http": {"addr": layout.registry_host},
    }
    (data / "config.yml").write_text(yaml.safe_dump(config))
    layout.start("registry", [layout.binary("registry"), "serve", str(data / "config.yml")])
    wait_until(
        lambda: http_get(f"http://{layout.registry_host}/v2/") is not None,
        timeout=30,
        what="registry",
        log=layout.log("registry"),
    )
