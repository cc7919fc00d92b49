"""Images are tagged by what the Dockerfile reads: a code change gives a new tag, a byte-code cache does not."""

from __future__ import annotations

from pathlib import Path

from posegen_devstack.images import BUILD_INPUTS, content_tag


def tree(root: Path) -> Path:
    for name in BUILD_INPUTS:
        if name in ("Dockerfile", "pyproject.toml"):
            (root / name).write_text(f"# {name}\n")
        else:
            (root / name / "pkg").mkdir(parents=True)
            (root / name / "pkg" / "module.py").write_text("VALUE = 1\n")
    return root


def test_a_code_change_gives_a_new_tag(tmp_path: Path) -> None:
    root = tree(tmp_path)
    before = content_tag(root)
    assert content_tag(root) == before, "the same content, the same tag"
    (root / "worker" / "pkg" / "module.py").write_text("VALUE = 2\n")
    assert content_tag(root) != before


def test_caches_and_build_leftovers_do_not_change_the_tag(tmp_path: Path) -> None:
    root = tree(tmp_path)
    before = content_tag(root)
    (root / "operator" / "pkg" / "__pycache__").mkdir()
    (root / "operator" / "pkg" / "__pycache__" / "module.cpython-311.pyc").write_bytes(b"\0")
    (root / "common" / "posegen_common.egg-info").mkdir()
    (root / "common" / "posegen_common.egg-info" / "PKG-INFO").write_text("x")
    assert content_tag(root) == before


def test_a_file_outside_the_build_does_not_change_the_tag(tmp_path: Path) -> None:
    root = tree(tmp_path)
    before = content_tag(root)
    (root / "README.md").write_text("docs\n")
    assert content_tag(root) == before
