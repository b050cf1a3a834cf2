"""The lock files: every dependency pinned with hashes, within pyproject.toml's bounds, and
what this environment runs is what they pin (CI and the Docker image install from them;
`make lock` updates them)."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def read_lock(name: str) -> dict[str, tuple[Requirement, list[str]]]:
    """{package: (pinned requirement, its hashes)} of a lock file."""
    pins: dict[str, tuple[Requirement, list[str]]] = {}
    current: str | None = None
    for raw in (ROOT / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("--hash="):
            assert current is not None, raw
            pins[current][1].append(line.removeprefix("--hash=").rstrip(" \\"))
            continue
        req = Requirement(line.rstrip(" \\"))
        current = canonicalize_name(req.name)
        pins[current] = (req, [])
    return pins


def project() -> dict[str, list[Requirement]]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = data.get("optional-dependencies", {})
    return {
        "runtime": [Requirement(r) for r in data["dependencies"]],
        "dev": [Requirement(r) for r in extras.get("dev", [])],
    }


@pytest.mark.parametrize("name", ["requirements.lock", "requirements-dev.lock"])
def test_every_pin_is_exact_and_hashed(name: str) -> None:
    pins = read_lock(name)
    assert pins
    for package, (req, hashes) in pins.items():
        [spec] = list(req.specifier)
        assert spec.operator == "==", package
        assert hashes and all(h.startswith("sha256:") for h in hashes), package


def test_the_locks_cover_pyproject_within_its_bounds() -> None:
    runtime, dev = read_lock("requirements.lock"), read_lock("requirements-dev.lock")
    wanted = project()
    for lock, reqs in ((runtime, wanted["runtime"]), (dev, wanted["runtime"] + wanted["dev"])):
        for req in reqs:
            pinned = lock.get(canonicalize_name(req.name))
            assert pinned is not None, f"{req.name} is not locked: run `make lock`"
            version = next(iter(pinned[0].specifier)).version
            assert req.specifier.contains(version, prereleases=True), (req, version)
    for package, (req, _) in runtime.items():  # the image runs what the tests ran
        assert str(dev[package][0].specifier) == str(req.specifier), package


def test_this_environment_runs_the_locked_versions() -> None:
    """`make test` installs from requirements-dev.lock: a mismatch is a stale environment."""
    stale = []
    for package, (req, _) in read_lock("requirements-dev.lock").items():
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            installed = metadata.version(package)
        except metadata.PackageNotFoundError:
            stale.append(f"{package} missing")
            continue
        if not req.specifier.contains(installed, prereleases=True):
            stale.append(f"{package} {installed} (locked {req.specifier})")
    assert not stale, "reinstall from the lock (make .venv/.installed): " + ", ".join(stale)
