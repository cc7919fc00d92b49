"""One source of truth for the CRD: crds/ holds it; the Helm chart and the kustomize manifests can
only carry copies (Helm and kustomize both refuse files outside their directory), and these tests
fail the moment a copy differs from the source."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "crds" / "posegen.io_posegenerations.yaml"
COPIES = (
    ROOT / "charts" / "posegen-operator" / "crds" / "posegen.io_posegenerations.yaml",
    ROOT / "deploy" / "crds" / "posegen.io_posegenerations.yaml",
)


@pytest.mark.parametrize("copy", COPIES, ids=lambda path: str(path.relative_to(ROOT)))
def test_copy_is_byte_identical_to_the_source(copy: Path) -> None:
    assert copy.exists(), f"{copy.relative_to(ROOT)} is missing: cp {SOURCE.relative_to(ROOT)} {copy.relative_to(ROOT)}"
    assert copy.read_bytes() == SOURCE.read_bytes(), (
        f"{copy.relative_to(ROOT)} differs from {SOURCE.relative_to(ROOT)} (the single source): "
        f"cp {SOURCE.relative_to(ROOT)} {copy.relative_to(ROOT)}"
    )


def test_the_source_is_the_posegeneration_crd() -> None:
    crd = yaml.safe_load(SOURCE.read_text())
    assert crd["kind"] == "CustomResourceDefinition"
    assert crd["metadata"]["name"] == "posegenerations.posegen.io"
    assert crd["spec"]["group"] == "posegen.io"
    assert crd["spec"]["names"]["kind"] == "PoseGeneration"
    assert crd["spec"]["names"]["plural"] == "posegenerations"


def test_chart_crds_dir_holds_only_the_copy() -> None:
    """Helm installs every file in crds/: a stray file there would be installed too."""
    chart_crds = ROOT / "charts" / "posegen-operator" / "crds"
    assert sorted(p.name for p in chart_crds.iterdir()) == [SOURCE.name]


def test_kustomize_crds_lists_the_copy() -> None:
    kustomization = yaml.safe_load((ROOT / "deploy" / "crds" / "kustomization.yaml").read_text())
    assert kustomization["resources"] == [SOURCE.name]
