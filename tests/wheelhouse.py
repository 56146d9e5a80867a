"""A local package index for the tests, made from the distributions installed in this venv.

Building the project's wheel (``pip wheel``: its isolated build environment needs setuptools)
and the AWS bundles (``pip download`` of the project's dependencies for the instances' platform)
would otherwise reach PyPI. Each installed distribution of the project's dependency closure (and
setuptools) is packed back into a wheel with the tags of its own ``WHEEL`` file and its files
listed in ``RECORD``; pip reads the directory through ``PIP_FIND_LINKS`` with ``PIP_NO_INDEX=1``.

The venv holds only this machine's (x86_64) builds: for the arm64 bundle, each platform wheel
is also written once more with its tags renamed to aarch64 (same contents: such a bundle is
only looked at, it cannot run here), so pip has to choose between the two architectures.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import re
import zipfile
from pathlib import Path

from packaging.requirements import Requirement

#: What the project's wheel and bundles need besides the project itself: its install_requires,
#: and setuptools (a worker bundle's build tool; the backend of ``pip wheel``'s build).
ROOTS = ("scalable-task-manager", "setuptools")
PROJECT = "scalable-task-manager"
#: Files of an installed distribution that are about that installation, not the wheel.
INSTALL_ONLY = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(roots=ROOTS) -> list[importlib.metadata.Distribution]:
    """The installed distributions ``roots`` need (no extras), the project itself left out."""
    found: dict[str, importlib.metadata.Distribution] = {}
    todo = list(roots)
    while todo:
        dist = importlib.metadata.distribution(todo.pop())
        key = _key(dist.metadata["Name"])
        if key in found:
            continue
        found[key] = dist
        for line in dist.requires or ():
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return [dist for key, dist in sorted(found.items()) if key != PROJECT]


def _tags(dist: importlib.metadata.Distribution) -> list[str]:
    wheel = dist.read_text("WHEEL") or ""
    tags = [line.split(":", 1)[1].strip() for line in wheel.splitlines() if line.startswith("Tag:")]
    if not tags:
        raise RuntimeError(f"{dist.metadata['Name']} was not installed from a wheel (no Tag in its WHEEL file)")
    return tags


def _file_name(name: str, version: str, tags: list[str]) -> str:
    """A wheel's file name: its tags compressed into ``python.abi.platform`` sets, in order."""
    parts = [list(dict.fromkeys(tag.split("-")[i] for tag in tags)) for i in range(3)]
    name = re.sub(r"[-_.]+", "_", name).lower()
    return f"{name}-{version}-{'-'.join('.'.join(p) for p in parts)}.whl"


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def repack(dist: importlib.metadata.Distribution, out_dir: Path, rename=lambda tag: tag) -> Path:
    """A wheel of the installed ``dist`` in ``out_dir``: the files its RECORD lists inside
    site-packages (no bytecode; scripts come back from its entry points on install), tags
    passed through ``rename``."""
    tags = [rename(tag) for tag in _tags(dist)]
    path = out_dir / _file_name(dist.metadata["Name"], dist.version, tags)
    info_dir = next(str(f).split("/")[0] for f in dist.files if str(f).split("/")[0].endswith(".dist-info"))
    record = []
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for file in dist.files:
            name = file.as_posix()
            parts = name.split("/")
            if parts[0] == ".." or "__pycache__" in parts or name.endswith(".pyc"):
                continue
            if parts[0] == info_dir and parts[-1] in INSTALL_ONLY:
                continue
            data = file.locate().read_bytes()
            if parts == [info_dir, "WHEEL"]:
                data = b"".join(line + b"\n" for line in data.splitlines() if not line.startswith(b"Tag:"))
                data += b"".join(f"Tag: {tag}\n".encode() for tag in tags)
            zf.writestr(name, data)
            record.append(_record_line(name, data))
        record.append(f"{info_dir}/RECORD,,")
        zf.writestr(f"{info_dir}/RECORD", "\n".join(record) + "\n")
    return path


def to_aarch64(tag: str) -> str:
    return tag.replace("x86_64", "aarch64")


def build(out_dir: Path) -> Path:
    """Fill ``out_dir`` with the wheels; returns it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for dist in closure():
        repack(dist, out_dir)
        if any("x86_64" in tag for tag in _tags(dist)):
            repack(dist, out_dir, to_aarch64)
    return out_dir
