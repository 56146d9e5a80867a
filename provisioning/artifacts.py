"""Code delivery: the project's wheel and the wheels it needs, in an S3 bucket made for the cluster.

The wheel is built by pip from setup.cfg and setup.py, the metadata ``pip install .`` uses, so an
instance runs exactly what the tests install: templates, static files and every package of
setup.cfg included. It is pure Python (``TM_PURE_WHEEL=1``: no compiled extension), one wheel
for x86_64 and arm64; it carries the C source of the hash engine, which a worker compiles at boot
with its own compiler (``python -m workerapp.native_build``) or else runs the hashlib loop.

Boot does not depend on PyPI: for each role (node, worker) and architecture that the cluster
uses, a *bundle* holds the project's wheel and the wheels of exactly what that role needs,
downloaded here for the instances' platform (CPython 3.11, manylinux). Instances install a
bundle with ``pip install --no-index --no-deps``. A worker's bundle holds requests and setuptools
(to compile the engine) besides the project: no flask, boto3 or gunicorn.
"""

from __future__ import annotations

import email.parser
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
#: Fixed file times inside the wheel (2020-01-01), so the same code gives the same wheel bytes.
SOURCE_DATE_EPOCH = "1577836800"
#: Not copied into the build: environments, caches, build output, and what setup.cfg does not ship.
BUILD_IGNORE = (".git", ".venv", "__pycache__", "build", "dist", "*.egg-info", "*.so", ".pytest_cache",
                "tests", "bench", "docs", "node_modules")

#: The Python of the instances (Amazon Linux 2023's ``python3.11`` package) and its wheel tags.
INSTANCE_PYTHON = "3.11"
PLATFORMS = {
    "x86_64": ("manylinux_2_34_x86_64", "manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"),
    "arm64": ("manylinux_2_34_aarch64", "manylinux_2_28_aarch64", "manylinux_2_17_aarch64",
              "manylinux2014_aarch64"),
}
ROLES = ("node", "worker")
#: The project requirements a worker imports (tests/test_layering.py keeps workerapp to these),
#: and what compiling the C engine at boot needs.
WORKER_REQUIREMENTS = ("requests",)
WORKER_BUILD_TOOLS = ("setuptools>=61",)


class ArtifactError(RuntimeError):
    """Building the wheel or downloading the dependency wheels failed; the message says which."""


@dataclass(frozen=True)
class Wheel:
    path: Path
    name: str  # the distribution name, e.g. scalable_task_manager
    version: str
    sha256: str
    requires: tuple[str, ...] = ()  # Requires-Dist of its metadata

    @property
    def filename(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class Bundle:
    """A tar of wheels that one role installs on one architecture, offline."""

    role: str
    arch: str
    path: Path
    sha256: str
    wheels: tuple[str, ...]  # file names inside

    @property
    def key(self) -> str:
        """Its S3 key: the same code and dependencies give the same key."""
        return f"bundles/{self.role}-{self.arch}-{self.sha256[:16]}.tar"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _run(cmd: Sequence[str], what: str, env: dict[str, str] | None = None) -> None:
    done = subprocess.run(list(cmd), capture_output=True, text=True, env=env, timeout=900)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-8:])
        raise ArtifactError(f"{what} failed (exit {done.returncode}):\n{tail}")


def read_wheel(path: Path) -> Wheel:
    """Name, version and requirements of a wheel file, from its METADATA."""
    match = re.match(r"^([A-Za-z0-9_.]+)-([^-]+)-.*\.whl$", path.name)
    if not path.is_file() or not match:
        raise ArtifactError(f"{path} is not a wheel file")
    with zipfile.ZipFile(path) as zf:
        metadata_name = next((n for n in zf.namelist() if n.endswith(".dist-info/METADATA")), None)
        if metadata_name is None:
            raise ArtifactError(f"{path} has no .dist-info/METADATA")
        metadata = email.parser.Parser().parsestr(zf.read(metadata_name).decode())
    return Wheel(path, match.group(1), metadata["Version"] or match.group(2), _sha256(path),
                 tuple(metadata.get_all("Requires-Dist") or ()))


def build_wheel(out_dir: Path, root: Path = PROJECT_ROOT) -> Wheel:
    """``pip wheel --no-deps`` of the project at ``root`` (a copy, so the checkout gets no build
    files), pure Python, into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tm-build-") as tmp:
        source = Path(tmp) / "src"
        shutil.copytree(root, source, ignore=shutil.ignore_patterns(*BUILD_IGNORE))
        env = {**os.environ, "TM_PURE_WHEEL": "1", "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH,
               "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
        _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", tmp + "/out",
              str(source)], "building the project's wheel (pip wheel)", env)
        (built,) = Path(tmp, "out").glob("*.whl")
        if not built.name.endswith("-py3-none-any.whl"):
            raise ArtifactError(f"the wheel {built.name} is not pure Python: one wheel cannot serve x86_64 and arm64")
        target = out_dir / built.name
        shutil.copyfile(built, target)
    return read_wheel(target)


def worker_requirements(wheel: Wheel) -> list[str]:
    """What a worker installs besides the project: WORKER_REQUIREMENTS with the project's own
    version ranges (from the wheel's metadata), and the tools to compile the engine."""
    from packaging.requirements import Requirement

    wanted = {name.lower() for name in WORKER_REQUIREMENTS}
    chosen = {}
    for line in wheel.requires:
        requirement = Requirement(line)
        if requirement.name.lower() in wanted and not (requirement.marker and "extra" in str(requirement.marker)):
            chosen[requirement.name.lower()] = str(requirement)
    missing = wanted - set(chosen)
    if missing:
        raise ArtifactError(f"the project's metadata does not require {', '.join(sorted(missing))}")
    return [*chosen.values(), *WORKER_BUILD_TOOLS]


def pip_download(args: Sequence[str], dest: Path, arch: str) -> None:
    """``pip download`` of binary wheels for the instances (CPython 3.11, manylinux, ``arch``)."""
    platforms = [option for tag in PLATFORMS[arch] for option in ("--platform", tag)]
    _run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
          "--only-binary=:all:", *platforms, "--python-version", INSTANCE_PYTHON, "--implementation", "cp",
          "--abi", f"cp{INSTANCE_PYTHON.replace('.', '')}", "--dest", str(dest), *args],
         f"downloading the wheels the instances need for {arch} (pip download)")


def build_bundle(wheel: Wheel, role: str, arch: str, out_dir: Path,
                 download: Callable[[Sequence[str], Path, str], None] = pip_download) -> Bundle:
    """The tar of wheels ``role`` installs on ``arch``: the project and what it needs."""
    if role not in ROLES or arch not in PLATFORMS:
        raise ValueError(f"no bundle for role {role!r} on {arch!r}")
    with tempfile.TemporaryDirectory(prefix="tm-bundle-") as tmp:
        house = Path(tmp)
        shutil.copyfile(wheel.path, house / wheel.filename)
        download([str(wheel.path)] if role == "node" else worker_requirements(wheel), house, arch)
        names = sorted(p.name for p in house.glob("*.whl"))
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{role}-{arch}.tar"
        with tarfile.open(path, "w") as tar:
            for name in names:  # fixed order and times: the same wheels give the same bytes
                info = tar.gettarinfo(str(house / name), arcname=name)
                info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode = (
                    int(SOURCE_DATE_EPOCH), 0, 0, "", "", 0o644)
                with (house / name).open("rb") as f:
                    tar.addfile(info, f)
    return Bundle(role, arch, path, _sha256(path), tuple(names))


@dataclass
class Artifacts:
    """The project's wheel (built from ``root`` unless given) and its bundles, made once each in
    ``work_dir`` when first asked for."""

    work_dir: Path
    given_wheel: Wheel | None = None
    root: Path = PROJECT_ROOT
    download: Callable[[Sequence[str], Path, str], None] = pip_download
    _wheel: Wheel | None = field(default=None, init=False, repr=False)
    _bundles: dict[tuple[str, str], Bundle] = field(default_factory=dict, init=False, repr=False)

    @property
    def wheel(self) -> Wheel:
        if self._wheel is None:
            self._wheel = self.given_wheel or build_wheel(self.work_dir / "dist", self.root)
        return self._wheel

    def bundle(self, role: str, arch: str) -> Bundle:
        if (role, arch) not in self._bundles:
            self._bundles[(role, arch)] = build_bundle(self.wheel, role, arch, self.work_dir / "bundles",
                                                       self.download)
        return self._bundles[(role, arch)]


def tls_only_policy(bucket: str, partition: str = "aws") -> dict:
    """The bucket refuses every request that does not come over TLS (``aws:SecureTransport``)."""
    arn = f"arn:{partition}:s3:::{bucket}"
    return {"Version": "2012-10-17", "Statement": [{
        "Sid": "DenyWithoutTls", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
        "Resource": [arn, f"{arn}/*"], "Condition": {"Bool": {"aws:SecureTransport": "false"}}}]}


class ArtifactBucket:
    """The cluster's private bucket holding the bundles."""

    def __init__(self, s3_client: Any, region: str) -> None:
        self.s3 = s3_client
        self.region = region

    def create(self, bucket: str, tags: list[dict], partition: str = "aws") -> None:
        """A private bucket (public access blocked) that refuses every request made without TLS."""
        kwargs: dict[str, Any] = {"Bucket": bucket}
        if self.region != "us-east-1":  # us-east-1 refuses an explicit location constraint
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        self.s3.create_bucket(**kwargs)
        self.s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration={
            "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True})
        self.s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": tags})
        self.s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(tls_only_policy(bucket, partition)))

    def upload(self, bucket: str, bundle: Bundle) -> str:
        """Put ``bundle`` under its key; returns its ``s3://`` URI."""
        self.s3.upload_file(str(bundle.path), bucket, bundle.key, ExtraArgs={"Metadata": {"sha256": bundle.sha256}})
        return f"s3://{bucket}/{bundle.key}"

    def delete(self, bucket: str) -> bool:
        """Empty and delete the bucket; False if it did not exist."""
        try:
            pages = self.s3.get_paginator("list_object_versions").paginate(Bucket=bucket)
            for page in pages:
                objects = [{"Key": o["Key"], "VersionId": o["VersionId"]}
                           for o in page.get("Versions", []) + page.get("DeleteMarkers", [])]
                if objects:
                    self.s3.delete_objects(Bucket=bucket, Delete={"Objects": objects, "Quiet": True})
            self.s3.delete_bucket(Bucket=bucket)
        except ClientError as err:
            if err.response["Error"]["Code"] == "NoSuchBucket":
                return False
            raise
        return True

    def exists(self, bucket: str) -> bool:
        try:
            self.s3.head_bucket(Bucket=bucket)
        except ClientError as err:
            if err.response["Error"]["Code"] in ("404", "NoSuchBucket", "NotFound"):
                return False
            raise
        return True
