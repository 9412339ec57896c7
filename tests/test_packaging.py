"""The built wheel ships the zoo cards and the converter inside the package, and no generic top-level name."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_contents(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(ROOT), "-w", str(tmp_path)],
                   check=True, capture_output=True)
    [wheel] = tmp_path.glob("knowlm_local-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    cards = {n for n in names if n.startswith("knowlm_local/models/") and n.endswith(".toml")}
    assert {f"knowlm_local/models/{p.name}" for p in (ROOT / "models").glob("*.toml")} == cards
    assert "knowlm_local/convert/__init__.py" in names
    subpackages = {f"{p.parent.relative_to(ROOT).as_posix()}/__init__.py"
                   for p in (ROOT / "knowlm_local").rglob("__init__.py")}
    assert subpackages <= set(names), sorted(subpackages - set(names))  # missing from pyproject
    top = {n.split("/")[0] for n in names if not n.startswith("knowlm_local-")}
    assert top == {"knowlm_local"}


def test_installed_package_finds_cards_and_converter():
    import knowlm_local.convert  # noqa: F401  (importable under the package, not as `convert`)

    from knowlm_local.zoo import cards_dir, load_cards

    assert len(load_cards()) == len(list(cards_dir().glob("*.toml"))) >= 7
