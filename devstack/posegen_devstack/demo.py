"""``make demo``: install the operator with its Helm chart on the kubelet node (images built from the
Dockerfile, pushed to the stack's registry), submit examples/posegeneration.yaml, show it progress
live to Completed, and say where the images are and what to try next. Where containers cannot run
it says so and uses the stack's operator process and the process node instead."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import kubernetes
import yaml
from kubernetes.client.exceptions import ApiException

from posegen_devstack import chart_install, images, kubelet_node
from posegen_devstack.layout import REPO_ROOT
from posegen_devstack.stack import Stack
from posegen_worker.run import output_directory

GROUP, VERSION, PLURAL = "posegen.io", "v1", "posegenerations"
EXAMPLE = REPO_ROOT / "examples" / "posegeneration.yaml"
BAR = 30


def progress_line(elapsed: float, status: dict[str, Any]) -> str:
    done, total = status.get("posesCompleted", 0), status.get("totalExpectedPoses") or 0
    filled = int(BAR * done / total) if total else 0
    bar = "█" * filled + "░" * (BAR - filled)
    return (
        f"[{elapsed:5.1f}s] {status.get('phase', 'Pending'):<11} {bar} {done:>3}/{total:<3} "
        f"recoveries {status.get('recoveries', 0)}  worker {status.get('workerPod') or '-'}"
    )


def install_operator(stack: Stack) -> dict[str, str]:
    """The chart on the kubelet node; empty when there is none (the stack's operator process acts)."""
    if not kubelet_node.kubelet_running(stack):
        print(
            "\n*** No kubelet node in this stack (`make up` said why): the operator runs as a local process"
            "\n*** and the worker on the process node, not in containers.\n",
            file=sys.stderr,
        )
        return {}
    print("Building the operator and worker images from the Dockerfile (buildah; cached when unchanged)...")
    built = images.build_images(stack)
    print(f"Installing the chart: helm upgrade --install {chart_install.RELEASE} -n {chart_install.RELEASE_NAMESPACE}")
    chart_install.install(stack, built, stop_local_operator=stack.stop_operator)
    return built


def run(state_dir: Path, timeout: float) -> int:
    stack = Stack(state_dir)
    built = install_operator(stack)
    api = kubernetes.config.new_client_from_config(config_file=str(stack.kubeconfig))
    custom = kubernetes.client.CustomObjectsApi(api)
    manifest = yaml.safe_load(EXAMPLE.read_text())
    name, namespace = manifest["metadata"]["name"], manifest["metadata"].get("namespace", "default")

    try:
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        print(f"Removing the previous {namespace}/{name} first...")
        while True:
            custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
            time.sleep(0.5)
    except ApiException as error:
        if error.status != 404:
            raise
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest)
    spec = manifest["spec"]
    print(
        f"Submitted PoseGeneration {namespace}/{name}: {spec['variationCount']} poses of "
        f'"{spec["textPrompt"]}"  (kubectl apply -f {EXAMPLE.relative_to(REPO_ROOT)})'
    )
    print("Watching it (Ctrl-C stops watching, not the generation). Try the seed's kill test meanwhile:")
    if built:
        print("  kill -9 $(pgrep -f posegen_worker)   # the worker container's main process\n")
    else:
        print(f"  kill -9 $(cat {stack.state_dir / 'node' / namespace}/<worker>.pid)\n")

    started = time.monotonic()
    last = ""
    status: dict[str, Any] = {}
    interactive = sys.stdout.isatty()
    while time.monotonic() - started < timeout:
        body = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        status = body.get("status") or {}
        line = progress_line(time.monotonic() - started, status)
        if line[9:] != last[9:]:
            print(("\r" + line) if interactive else line, end="" if interactive else "\n", flush=True)
            last = line
        if status.get("phase") in ("Completed", "Failed", "Cancelled"):
            break
        time.sleep(0.5)
    print()
    if status.get("phase") != "Completed":
        print(f"\nThe generation did not complete ({status.get('phase')}: {status.get('message')}).")
        where = (
            f"kubectl -n {chart_install.RELEASE_NAMESPACE} logs deploy/posegen-operator"
            if built
            else stack.log("operator")
        )
        print(f"Look at: kubectl describe posegeneration {name}; {where}")
        return 1

    images_dir = output_directory(stack.output_dir, namespace, name, status["generationId"])
    pngs = sorted(images_dir.glob("pose-*.png"))
    print(f"""
Completed: {status["posesCompleted"]}/{status["totalExpectedPoses"]} poses, {status.get("recoveries", 0)} recoveries.

Images: {images_dir}/
  {len(pngs)} PNG files (pose-0000.png ... ) with their COCO-17 keypoints beside them (pose-0000.json)
{container_images(built)}
Try next (after `. {stack.env_file}`):
  kubectl get posegenerations                      # phase, progress, recoveries, worker, age
  kubectl describe posegeneration {name}               # conditions and every event
  kubectl apply -f {EXAMPLE.relative_to(REPO_ROOT)}  # (after deleting it) and kill -9 its worker mid-way
  curl -s $POSEGEN_API_URL/api/apps/pose-generator/recovery/status -H "Authorization: Bearer $POSEGEN_ADMIN_TOKEN"
  curl -s $POSEGEN_API_URL/api/apps/pose-generator/health
  psql $DATABASE_URL -c "SELECT id, status, poses_completed, total_expected_poses, started_at
                         FROM pose_generation WHERE id = '{status["generationId"]}'"
  {operator_logs(built, stack)} | grep -i recovery
  make down                                        # stop everything
(POSEGEN_API_URL and POSEGEN_ADMIN_TOKEN come from {stack.env_file}.)""")
    return 0


def operator_logs(built: dict[str, str], stack: Stack) -> str:
    if built:
        return f"kubectl -n {chart_install.RELEASE_NAMESPACE} logs deploy/{chart_install.DEPLOYMENT}"
    return f"cat {stack.log('operator')}"


def container_images(built: dict[str, str]) -> str:
    if not built:
        return "Operator and worker ran as local processes (no kubelet node).\n"
    lines = "".join(f"  {target:<9} {image}\n" for target, image in built.items())
    return (
        f"Container images (built from the Dockerfile, in the stack's registry; `buildah images` lists them):\n"
        f"{lines}The operator runs in a container: kubectl -n {chart_install.RELEASE_NAMESPACE} get pods -o wide\n"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--state-dir", type=Path, default=Path(".local"))
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args(argv)
    sys.exit(run(args.state_dir, args.timeout))


if __name__ == "__main__":
    main()
