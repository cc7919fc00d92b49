"""``python -m posegen_devstack up|down|status|images|node``: the local stack's command line."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from posegen_devstack import images, process_node
from posegen_devstack.processes import StackError
from posegen_devstack.stack import Stack


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="posegen-stack", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status", "images", "node"])
    parser.add_argument("--state-dir", type=Path, default=Path(os.environ.get("POSEGEN_STATE_DIR", ".local")))
    args, rest = parser.parse_known_args(argv)
    if args.command == "node":
        process_node.main(["--state-dir", str(args.state_dir), *rest])
        return
    stack = Stack(args.state_dir)
    try:
        if args.command == "up":
            stack.up()
            print(f"local stack is up; run: . {stack.env_file}")
        elif args.command == "images":
            for target, image in images.build_images(stack).items():
                print(f"{target:<9} {image}")
        elif args.command == "down":
            stopped = stack.down() if stack.config_file.exists() else []
            print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
        else:
            for name, pid in stack.status().items():
                print(f"{name:<24} {'running, pid ' + str(pid) if pid else 'stopped'}")
            if stack.config_file.exists():
                print(
                    f"\nkube-apiserver  {stack.apiserver_url}\npostgres        {stack.database_url}\n"
                    f"redis           {stack.redis_url}\nprometheus      {stack.prometheus_url}\n"
                    f"admin API       {stack.api_url}\nenv file        {stack.env_file}"
                )
    except StackError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
