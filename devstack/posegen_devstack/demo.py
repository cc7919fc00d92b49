"""``make demo``: submit examples/posegeneration.yaml to the local stack, show it progress live to
Completed, and say where the images are and what to try next."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import kubernetes
import yaml
from kubernetes.client.exceptions import ApiException

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


def run(state_dir: Path, timeout: float) -> int:
    stack = Stack(state_dir)
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
        print(f"Look at: kubectl describe posegeneration {name}; {stack.log('operator')}")
        return 1

    images = output_directory(stack.output_dir, namespace, name, status["generationId"])
    pngs = sorted(images.glob("pose-*.png"))
    print(f"""
Completed: {status["posesCompleted"]}/{status["totalExpectedPoses"]} poses, {status.get("recoveries", 0)} recoveries.

Images: {images}/
  {len(pngs)} PNG files (pose-0000.png ... ) with their COCO-17 keypoints beside them (pose-0000.json)

Try next (after `. {stack.env_file}`):
  kubectl get posegenerations                      # phase, progress, recoveries, worker, age
  kubectl describe posegeneration {name}               # conditions and every event
  kubectl apply -f {EXAMPLE.relative_to(REPO_ROOT)}  # (after deleting it) and kill -9 its worker mid-way
  curl -s $POSEGEN_API_URL/api/apps/pose-generator/recovery/status -H "Authorization: Bearer $POSEGEN_ADMIN_TOKEN"
  curl -s $POSEGEN_API_URL/api/apps/pose-generator/health
  psql $DATABASE_URL -c "SELECT id, status, poses_completed, total_expected_poses, started_at
                         FROM pose_generation WHERE id = '{status["generationId"]}'"
  grep -i recovery {stack.log("operator")}
  make down                                        # stop everything
(POSEGEN_API_URL and POSEGEN_ADMIN_TOKEN come from {stack.env_file}.)""")
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--state-dir", type=Path, default=Path(".local"))
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args(argv)
    sys.exit(run(args.state_dir, args.timeout))


if __name__ == "__main__":
    main()
