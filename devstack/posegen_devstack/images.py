"""The images the kubelet node runs, built with buildah and pushed to the stack's registry: the pod
sandbox (a static pause program), a Python base assembled with debootstrap, and the operator and
worker from the project's Dockerfile. Tags are content hashes, so a code change gives a new tag;
the base and the pause binary are cached by version outside the repo."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from posegen_devstack.layout import REPO_ROOT, Layout
from posegen_devstack.processes import StackError

CACHE = Path(os.environ.get("POSEGEN_CACHE", Path.home() / ".cache" / "posegen"))
PAUSE_SOURCE = REPO_ROOT / "devstack" / "images" / "pause.c"
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = ("python3.11", "python3.11-venv", "python3-distutils")
BASE_VERSION = f"{DEBIAN_SUITE}-python3.11-1"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# What the Dockerfile's COPY lines read: a change in any of these gives new image tags.
BUILD_INPUTS = ("Dockerfile", "pyproject.toml", "common", "operator", "worker", "devstack")
TARGETS = ("worker", "operator")


def buildah(*args: str, capture: bool = True) -> str:
    result = subprocess.run(["buildah", *args], stdout=subprocess.PIPE if capture else None, text=True, check=False)
    if result.returncode != 0:
        raise StackError(f"buildah {' '.join(args[:3])} failed (exit {result.returncode})")
    return result.stdout.strip() if capture else ""


def image_exists(name: str) -> bool:
    return (
        subprocess.run(["buildah", "inspect", "--type", "image", name], capture_output=True, check=False).returncode
        == 0
    )


def push(local: str, remote: str) -> None:
    buildah("push", "--quiet", "--tls-verify=false", local, f"docker://{remote}")


# ---- the pod sandbox -----------------------------------------------------------------------------
def pause_image_name(layout: Layout) -> str:
    digest = hashlib.sha256(PAUSE_SOURCE.read_bytes()).hexdigest()[:12]
    return f"{layout.registry_host}/posegen/pause:{digest}"


def ensure_pause_image(layout: Layout) -> str:
    """Build (once per source) and push the sandbox image; returns its name in the registry."""
    remote = pause_image_name(layout)
    local = "localhost/posegen/pause:" + remote.rsplit(":", 1)[1]
    if not image_exists(local):
        binary = CACHE / "pause" / remote.rsplit(":", 1)[1] / "pause"
        if not binary.exists():
            binary.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                ["gcc", "-static", "-Os", "-s", "-o", str(binary), str(PAUSE_SOURCE)], check=True, capture_output=True
            )
        container = buildah("from", "scratch")
        try:
            buildah("copy", container, str(binary), "/pause")
            buildah("config", "--entrypoint", '["/pause"]', "--user", "65535:65535", container)
            buildah("commit", "--quiet", container, local)
        finally:
            buildah("rm", container)
    push(local, remote)
    return remote


# ---- the Python base -----------------------------------------------------------------------------
def base_image_name() -> str:
    return f"localhost/posegen/python-base:{BASE_VERSION}"


def ensure_base_image() -> str:
    """Debian bookworm (debootstrap minbase) with Debian's Python 3.11, the machine's CA bundle and
    pip told to use it (the package index is reached through it here). Built once per version."""
    name = base_image_name()
    if image_exists(name):
        return name
    started = time.monotonic()
    print(f"building the Python base image {name} (debootstrap, about a minute or two)", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="posegen-base-", dir=CACHE if CACHE.exists() else None) as tmp:
        rootfs = Path(tmp) / "rootfs"
        subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                DEBIAN_SUITE,
                str(rootfs),
                DEBIAN_MIRROR,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for item in (rootfs / cache).glob("*"):
                if item.is_file():
                    item.unlink()
        (rootfs / "usr/bin/python").symlink_to("python3.11")
        (rootfs / "etc/ssl/certs").mkdir(parents=True, exist_ok=True)
        shutil.copy(CA_BUNDLE, rootfs / "etc/ssl/certs/ca-certificates.crt")
        (rootfs / "etc/pip.conf").write_text(f"[global]\ncert = {CA_BUNDLE}\n")
        container = buildah("from", "scratch")
        try:
            mount = buildah("mount", container)
            subprocess.run(
                f"tar -C {rootfs} --exclude=./dev/* --exclude=./proc/* --exclude=./sys/* -cf - . "
                f"| tar -C {mount} -xf -",
                shell=True,
                check=True,
            )
            buildah("umount", container)
            buildah(
                "config",
                "--env",
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "--env",
                "LANG=C.UTF-8",
                "--cmd",
                '["python3"]',
                container,
            )
            buildah("commit", "--quiet", container, name)
        finally:
            buildah("rm", container)
    print(f"base image built in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return name


# ---- the project's images ------------------------------------------------------------------------
def content_tag() -> str:
    """A hash of everything the Dockerfile reads (and the base's version)."""
    digest = hashlib.sha256(BASE_VERSION.encode())
    for top in BUILD_INPUTS:
        path = REPO_ROOT / top
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            if "__pycache__" in file.parts or file.suffix == ".pyc" or ".egg-info" in str(file):
                continue
            digest.update(str(file.relative_to(REPO_ROOT)).encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()[:12]


def image_name(layout: Layout, target: str, tag: str | None = None) -> str:
    return f"{layout.registry_host}/posegen/posegen-{target}:{tag or content_tag()}"


def build_images(layout: Layout) -> dict[str, str]:
    """Build both targets from the one Dockerfile and push them; returns target -> image."""
    base = ensure_base_image()
    tag = content_tag()
    built = {}
    for target in TARGETS:
        remote = image_name(layout, target, tag)
        local = "localhost/posegen/posegen-{}:{}".format(target, remote.rsplit(":", 1)[1])
        if not image_exists(local):
            started = time.monotonic()
            buildah(
                "bud",
                "--layers",
                "--network",
                "host",
                "--target",
                target,
                "--build-arg",
                f"PYTHON_IMAGE={base}",
                "-t",
                local,
                str(REPO_ROOT),
                capture=False,
            )
            print(f"{target} image built in {time.monotonic() - started:.0f} s", file=sys.stderr)
        push(local, remote)
        built[target] = remote
    return built
