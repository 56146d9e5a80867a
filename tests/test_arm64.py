"""The arm64 kernels of workerapp/_sha512chain.c under an emulator: the C file built alone (its
self-test main, ``-DSHA512CHAIN_SELFTEST``) with Debian's aarch64 cross compiler and run with
``qemu-aarch64``: the ``sha512ce`` kernel (Armv8.2 SHA-512 instructions, ``-cpu max``) and the
scalar code agree with hashlib; on a CPU without those instructions only ``scalar`` is chosen.

CI installs gcc-aarch64-linux-gnu and qemu-user (.ci/run) and sets REQUIRE_ARM64=1: there the
test runs, elsewhere it is skipped when the tools are missing."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "workerapp" / "_sha512chain.c"
CC, QEMU = "aarch64-linux-gnu-gcc", "qemu-aarch64"


@pytest.fixture(scope="module")
def selftest(tmp_path_factory):
    """The self-test program, built for aarch64 (static: no aarch64 libc needed to run it)."""
    missing = [tool for tool in (CC, QEMU) if shutil.which(tool) is None]
    if missing:
        if os.environ.get("REQUIRE_ARM64") == "1":
            pytest.fail(f"REQUIRE_ARM64=1 but {', '.join(missing)} missing (apt install gcc-aarch64-linux-gnu qemu-user)")
        pytest.skip(f"{', '.join(missing)} not installed")
    binary = tmp_path_factory.mktemp("arm64") / "sha512chain"
    built = subprocess.run([CC, "-O2", "-Wall", "-Werror", "-static", "-DSHA512CHAIN_SELFTEST", str(SOURCE), "-o",
                            str(binary)], capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    return binary


def run(binary: Path, cpu: str, jobs: list[tuple[str, bytes, int]]) -> tuple[list[str], list[str]]:
    """(kernels of that CPU as NAME/LANES, the hex digest of each (kernel, digest, count) job)."""
    lines = "".join(f"{kernel} {digest.hex()} {count}\n" for kernel, digest, count in jobs)
    done = subprocess.run([QEMU, "-cpu", cpu, str(binary)], input=lines, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    first, *out = done.stdout.splitlines()
    return first.split(), out


def reference(digest: bytes, count: int) -> str:
    for _ in range(count):
        digest = hashlib.sha512(digest).digest()
    return digest.hex()


@settings(max_examples=12, deadline=None)
@given(jobs=st.lists(st.tuples(st.binary(min_size=64, max_size=64), st.integers(0, 2_000)), min_size=1, max_size=8))
def test_sha512ce_and_scalar_agree_with_hashlib_under_qemu(selftest, jobs):
    kernels, out = run(selftest, "max", [(k, d, n) for d, n in jobs for k in ("sha512ce", "scalar")])
    assert kernels == ["sha512ce/1", "scalar/1"]  # the SHA-512 instructions are found, and preferred
    assert out == [reference(d, n) for d, n in jobs for _ in range(2)]


def test_a_long_chain_and_the_fips_check_value_under_qemu(selftest):
    """sha512 of sha512('abc') (FIPS 180-4's example, then one more) and 100,000 iterations."""
    abc = hashlib.sha512(b"abc").digest()
    assert abc.hex().startswith("ddaf35a193617aba")
    jobs = [("sha512ce", abc, 1), ("sha512ce", abc, 100_000), ("scalar", abc, 100_000)]
    _, out = run(selftest, "max", jobs)
    assert out == [hashlib.sha512(abc).hexdigest()] + [reference(abc, 100_000)] * 2


def test_a_cpu_without_sha512_instructions_gets_the_scalar_kernel(selftest):
    digest = hashlib.sha512(b"no sha512 here").digest()
    kernels, out = run(selftest, "cortex-a72", [("sha512ce", digest, 5), ("scalar", digest, 5)])
    assert kernels == ["scalar/1"]
    assert out == ["error", reference(digest, 5)]  # the kernel it lacks is refused, not faked
