"""A plain install (no extras) trains and reports: every package kdbench imports is declared.

The package is built from this checkout and installed into a fresh virtual env that sees only the
distributions its declared requirements (pyproject.toml `dependencies`, no extras) pull in, found in
the test env and exposed through a folder of symbolic links: nothing is downloaded (torch is
gigabytes), and an import of a package kdbench does not declare fails as it would for a user.
"""

import email
import importlib.metadata as metadata
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
# what `pip wheel` needs of the checkout (pyproject.toml [tool.setuptools])
SOURCES = ("pyproject.toml", "README.md", "kdbench", "methods", "registry")
TINY_RUN = ["--dataset", "synthetic", "--pairs", "resnet14:resnet8", "--methods", "student,kd"]
TINY_RUN += ["--epochs", "1", "--teacher-epochs", "1", "--train-subset", "128", "--vam", "off", "--jobs", "1"]
PIP = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]


def declared_requirements(wheel: Path) -> list[Requirement]:
    """What installing `wheel` without extras requires (its metadata's Requires-Dist)."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        fields = email.message_from_bytes(archive.read(name))
    requirements = [Requirement(text) for text in fields.get_all("Requires-Dist", [])]
    return [r for r in requirements if r.marker is None or r.marker.evaluate({"extra": ""})]


def dependency_closure(requirements: list[Requirement]) -> dict[str, metadata.Distribution]:
    """The installed distributions `requirements` pull in, recursively (markers and extras honoured)."""
    found: dict[str, metadata.Distribution] = {}
    visited: set[tuple[str, str]] = set()
    pending = list(requirements)
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        try:
            distribution = found.get(name) or metadata.distribution(requirement.name)
        except metadata.PackageNotFoundError:
            continue  # pip, installing without an index, names it
        found[name] = distribution
        for extra in {"", *requirement.extras}:
            if (name, extra) in visited:
                continue
            visited.add((name, extra))
            for text in distribution.requires or []:
                dependency = Requirement(text)
                if dependency.marker is None or dependency.marker.evaluate({"extra": extra}):
                    pending.append(dependency)
    return found


def link_farm(distributions: dict[str, metadata.Distribution], folder: Path) -> None:
    """A folder holding a link to each top-level file of `distributions` (packages, modules, metadata)."""
    folder.mkdir()
    for distribution in distributions.values():
        site = Path(distribution.locate_file(""))
        for file in distribution.files or []:
            top = file.parts[0]
            if top != ".." and not (folder / top).exists():
                (folder / top).symlink_to(site / top)


def build_wheel(folder: Path) -> Path:
    """kdbench's wheel, built from a copy of this checkout (the build writes beside its sources)."""
    source = folder / "source"
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, source / name)
    subprocess.run([*PIP, "wheel", "--no-deps", "--no-build-isolation", "-w", folder, source], check=True)
    return next(folder.glob("kdbench-*.whl"))


def plain_env(tmp_path: Path) -> Path:
    """A virtual env with kdbench installed from its wheel without extras, seeing only what it declares."""
    wheel = build_wheel(tmp_path)
    env = tmp_path / "env"
    venv.create(env, with_pip=False)
    farm = tmp_path / "declared"
    link_farm(dependency_closure(declared_requirements(wheel)), farm)
    site_packages = next((env / "lib").glob("python*/site-packages"))
    (site_packages / "declared.pth").write_text(f"{farm}\n")
    # no index: pip finds every requirement in the folder of links, or fails naming the missing one
    subprocess.run([*PIP, "--python", env / "bin" / "python", "install", "--no-index", wheel], check=True)
    return env


@pytest.mark.slow
def test_a_plain_install_trains_and_reports(tmp_path):
    env = plain_env(tmp_path)
    work = tmp_path / "work"  # outside the checkout: its kdbench/ must not shadow the install
    work.mkdir()
    environ = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    kdbench = str(env / "bin" / "kdbench")
    for argv in ([kdbench, "run", *TINY_RUN, "--out", "store"], [kdbench, "report", "--out", "store"]):
        done = subprocess.run(argv, cwd=work, env=environ, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
    assert "kd" in done.stdout and "student" in done.stdout
    where = subprocess.run(
        [env / "bin" / "python", "-c", "import kdbench; print(kdbench.__file__)"],
        cwd=work,
        env=environ,
        capture_output=True,
        text=True,
        check=True,
    )
    assert str(env) in where.stdout  # the installed package ran, not this checkout
