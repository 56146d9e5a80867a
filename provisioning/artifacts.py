"""Code delivery: this checkout as a wheel, in an S3 bucket made for the cluster.

Instances install exactly the code of the machine that ran ``run_program.py`` (no git remote
needed). The wheel is written directly with ``zipfile`` (a pure-Python wheel is a zip file with
a ``.dist-info`` folder), so building it needs neither network nor the ``wheel`` package.
"""

from __future__ import annotations

import base64
import configparser
import csv
import hashlib
import io
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
#: Fixed timestamp inside the zip, so the same code gives the same wheel bytes.
ZIP_TIME = (2020, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class Wheel:
    path: Path
    name: str  # the distribution name, e.g. scalable_task_manager
    version: str
    sha256: str

    @property
    def filename(self) -> str:
        return self.path.name


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _setup_cfg(root: Path) -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(root / "setup.cfg")
    return cfg


def packages(root: Path = PROJECT_ROOT) -> list[str]:
    """The top-level packages of the distribution (setup.cfg's ``packages.find`` include list)."""
    return [name for name in _setup_cfg(root)["options.packages.find"]["include"].split() if "." not in name]


def _metadata(root: Path) -> tuple[str, str, str, list[str]]:
    cfg = _setup_cfg(root)
    name = cfg["metadata"]["name"]
    version_text = (root / "nodeapp" / "version.py").read_text()
    version = re.search(r'__version__\s*=\s*"([^"]+)"', version_text).group(1)
    requires = [line.strip() for line in cfg["options"]["install_requires"].splitlines() if line.strip()]
    return name, version, cfg["options"].get("python_requires", ">=3.11"), requires


def build_wheel(out_dir: Path, root: Path = PROJECT_ROOT) -> Wheel:
    """Write ``<name>-<version>-py3-none-any.whl`` for the project at ``root`` into ``out_dir``."""
    name, version, python_requires, requires = _metadata(root)
    dist = re.sub(r"[-_.]+", "_", name).lower()
    info = f"{dist}-{version}.dist-info"
    files: dict[str, bytes] = {}
    top_level = packages(root)
    for package in top_level:
        for path in sorted((root / package).rglob("*.py")):
            if "__pycache__" not in path.parts:
                files[path.relative_to(root).as_posix()] = path.read_bytes()
    for module in ("wsgi.py", "run_program.py"):
        files[module] = (root / module).read_bytes()
    metadata = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}",
                f"Requires-Python: {python_requires}", *(f"Requires-Dist: {r}" for r in requires)]
    files[f"{info}/METADATA"] = ("\n".join(metadata) + "\n").encode()
    files[f"{info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: provisioning.artifacts\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    files[f"{info}/top_level.txt"] = ("\n".join([*top_level, "run_program", "wsgi"]) + "\n").encode()
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    for arcname, data in files.items():
        writer.writerow([arcname, _record_hash(data), len(data)])
    writer.writerow([f"{info}/RECORD", "", ""])
    files[f"{info}/RECORD"] = record.getvalue().encode()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for arcname, data in files.items():
            entry = zipfile.ZipInfo(arcname, ZIP_TIME)
            entry.external_attr = 0o644 << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(entry, data)
    return Wheel(path, dist, version, hashlib.sha256(path.read_bytes()).hexdigest())


class ArtifactBucket:
    """The cluster's private bucket holding the wheel."""

    def __init__(self, s3_client: Any, region: str) -> None:
        self.s3 = s3_client
        self.region = region

    def create(self, bucket: str, tags: list[dict]) -> None:
        kwargs: dict[str, Any] = {"Bucket": bucket}
        if self.region != "us-east-1":  # us-east-1 refuses an explicit location constraint
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        self.s3.create_bucket(**kwargs)
        self.s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration={
            "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True})
        self.s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": tags})

    def upload(self, bucket: str, key: str, wheel: Wheel) -> str:
        self.s3.upload_file(str(wheel.path), bucket, key, ExtraArgs={"Metadata": {"sha256": wheel.sha256}})
        return f"s3://{bucket}/{key}"

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
