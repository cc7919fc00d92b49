"""Benchmarks and fault figures: scripts that print figures and ratios (see docs/BENCHMARKS.md).

Run one with ``.venv/bin/python -m bench.<name> [--quick|--full]`` from the repository root, or all
of them with ``make bench`` / ``make bench-full``. Each starts its own local stack in a temporary
state dir and stops it at the end, so it never meets a developer's ``make up`` or a test session."""
