"""A wheel install works: every file under cora/resources is in the wheel, and the demo's data is among them.

A package-data glob one level too shallow once left the query tower's adapter out of the wheel, and the demo's
sample lived outside the package, so `cora demo` failed from any install that was not editable.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from .conftest import REPO

RESOURCES = REPO / "cora" / "resources"


def test_wheel_holds_every_file_under_resources(tmp_path):
    # Build from a copy, so that setuptools' build/ and egg-info never land in (or race with) the checkout.
    src = tmp_path / "src"
    shutil.copytree(REPO / "cora", src / "cora", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "-q", "-w", str(tmp_path / "dist")],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("cora-*.whl")
    in_wheel = set(zipfile.ZipFile(wheel).namelist())
    shipped = {p.relative_to(REPO).as_posix() for p in RESOURCES.rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    assert "cora/resources/mdpr-me5-small/query_adapter/adapter_model.safetensors" in shipped
    assert sorted(shipped - in_wheel) == []


def test_demo_reads_its_sample_from_inside_the_package():
    import cora
    from cora.commands.demo import SAMPLE

    assert SAMPLE.is_relative_to(Path(cora.__file__).parent / "resources")
    assert (SAMPLE / "passages.jsonl").is_file() and (SAMPLE / "questions.jsonl").is_file()
