"""The built project image and the container tool that runs it (`make test-containers`)."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def project_version() -> str:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    return parser["metadata"]["version"]


@pytest.fixture(scope="session")
def podman() -> list[str]:
    """The podman command line, with the project's containers.conf; fails when podman is absent."""
    exe = shutil.which("podman")
    if exe is None:
        pytest.fail("podman is required: `make test-containers` installs it (Debian packages)")
    os.environ.setdefault("CONTAINERS_CONF", str(ROOT / "containers" / "containers.conf"))
    return [exe]


@pytest.fixture(scope="session")
def cpu_image(podman: list[str]) -> str:
    """reidflow:<version>, which `make image` builds; fails when it was not built."""
    tag = f"reidflow:{project_version()}"
    found = subprocess.run([*podman, "image", "exists", tag], check=False)
    if found.returncode != 0:
        pytest.fail(f"image {tag} is missing: run `make image` first")
    return tag
