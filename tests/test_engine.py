"""The hash engines: the C chain (workerapp._native) and the hashlib loop agree with a plain hashlib
reference; engine selection, its override and its fallback, in-process and in a real worker."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import running_cluster, wait_for
from workerapp import engine
from workerapp.compute import compute

ROOT = Path(__file__).resolve().parent.parent
SIZES = [0, 1, 111, 112, 127, 128, 129, 1 << 20]
#: sha512 of body(size), then 999,999 more times: made with the hashlib loop of ``reference``.
MILLION = {
    0: "69ec0da454e4affbdacd248b591c49e480714b501e290adf0df9d719a323be1e"
       "92948c2db5c2644f157c05a4d98b0c34654f8e962efa6855cad465e654d1a3af",
    1: "697dbb9bad49e88529cd1f11ec2b231448ce4cd94e3e35384b828d9ea1866840"
       "8a8056b14449ebc46b367928ac375ba9375472a02155c65940830fd289d460b9",
    111: "294ba144225e4e3732af438d85bf6cc74fc09a575c33e2bc440d4972eef9e721"
         "c4f3d92eee8ed3a0c5fda5eab9e33695676bad23e446ce7bb6fa60e5be72744a",
    112: "4f28dc157707a9eff0c3bad3da5126f0cd713b287ece95ec1fef8aed7d9c317e"
         "27840506896d3299198415d9ef6e506b30613f45b725359b2d5005d857a7aa9f",
    127: "5077c47b424c9c5c21dc6cd7ff9fb9a20ad7c62587ce0d5d36b7cb56015f35c3"
         "6907232a099b6c510efdb1581cf3959edfe20f44be9cc55cd9b7c7906cec62df",
    128: "ca3aac80f07d49f01e44f645f209709b3b4ba987aae077e40c8d9e0478f4c318"
         "90ea38ad8e0a15dfc5fd82fe7a971379faf60e4027d3c7123bfb9b8f6b413975",
    129: "49d805654b034356c280eb46db9716b65f155193d9320b9505979cde802d9980"
         "be49e7f569228a7d34a69646999b90b715cd607a73d20d54e576f358c77aa583",
    1 << 20: "22654b67caa0a66f84d9d4ce965e9cfa15077a980208f7308e3ff7515f3c01b3"
             "e1408c8b3204198ebc746df793bae565edb2bb2cf73cc97d77e75394631497aa",
}


def body(size: int) -> bytes:
    return (bytes(range(256)) * (size // 256 + 1))[:size]


def reference(data: bytes, iterations: int) -> str:
    digest = hashlib.sha512(data).digest()
    for _ in range(iterations - 1):
        digest = hashlib.sha512(digest).digest()
    return digest.hex()


def expected(size: int, iterations: int) -> str:
    return MILLION[size] if iterations == 1_000_000 else reference(body(size), iterations)


@pytest.fixture(scope="module")
def native():
    if os.environ.get("REQUIRE_NATIVE") == "1":
        from workerapp import _native
    else:
        _native = pytest.importorskip("workerapp._native", reason="the C extension is not built here")
    return _native


def test_native_is_built_where_required():
    """CI sets REQUIRE_NATIVE=1: there the extension must have been built by the install."""
    if os.environ.get("REQUIRE_NATIVE") != "1":
        pytest.skip("REQUIRE_NATIVE is not 1")
    import workerapp._native  # noqa: F401

    assert engine.select_engine({}).name == "native"


@pytest.mark.parametrize("iterations", [1, 2, 1000, 1_000_000])
@pytest.mark.parametrize("size", SIZES)
def test_native_agrees_with_hashlib_on_the_vector_table(native, size, iterations):
    assert engine.compute_native(body(size), iterations) == expected(size, iterations)


@pytest.mark.parametrize("iterations", [1, 2, 1000])
@pytest.mark.parametrize("size", SIZES)
def test_python_loop_agrees_with_hashlib_on_the_vector_table(size, iterations):
    assert compute(body(size), iterations) == reference(body(size), iterations)


def test_python_loop_agrees_at_a_million_iterations():
    assert compute(body(129), 1_000_000) == MILLION[129]


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=300), iterations=st.integers(min_value=1, max_value=3000))
def test_native_agrees_with_hashlib_on_random_cases(native, data, iterations):
    assert engine.compute_native(data, iterations) == reference(data, iterations)


def test_native_chain_edges(native):
    digest = hashlib.sha512(b"x").digest()
    assert native.chain(digest, 0) == digest
    assert native.chain(bytearray(digest), 1) == hashlib.sha512(digest).digest()
    with pytest.raises(ValueError, match="64 bytes"):
        native.chain(digest[:63], 1)
    with pytest.raises(ValueError, match=">= 0"):
        native.chain(digest, -1)
    with pytest.raises(ValueError):
        engine.compute_native(b"x", 0)


def test_native_chain_releases_the_gil(native):
    """While a long chain runs in one thread, another thread keeps running Python code."""
    digest = hashlib.sha512(b"").digest()
    result = []
    thread = threading.Thread(target=lambda: result.append(native.chain(digest, 3_000_000)))
    thread.start()
    progress = 0
    while thread.is_alive():
        progress += 1
    thread.join()
    assert result and progress > 1000


# ------------------------------------------------------------------ selection
def test_auto_picks_native_when_built(native, caplog):
    with caplog.at_level(logging.INFO, logger="workerapp.engine"):
        chosen = engine.select_engine({})
    assert chosen.name == "native" and chosen.parallel and chosen.kernel == native.KERNELS[0]
    assert chosen.width == native.LANES[chosen.kernel] == {"avx512": 8, "avx2": 4, "sha512ce": 1, "scalar": 1}[chosen.kernel]
    note = (f"{chosen.kernel} kernel: {chosen.width} chains at once in vector lanes" if native.SIMD
            else f"{chosen.kernel} kernel: one chain")
    assert [r.getMessage() for r in caplog.records] == [f"hash engine: native (C extension workerapp._native, {note})"]
    assert (chosen.compute_many is not None) == bool(native.SIMD)


def test_a_native_build_that_raises_falls_back_to_the_hashlib_loop(native, monkeypatch, caplog):
    """A stale build (a ``chain`` of another signature, as after an upgrade without a rebuild)
    makes the self-check raise: the worker falls back to the hashlib loop instead of crashing."""
    def stale_chain(*args):
        raise TypeError(f"chain() takes exactly 2 arguments ({len(args)} given)")

    monkeypatch.setattr(native, "chain", stale_chain)
    with caplog.at_level(logging.WARNING, logger="workerapp.engine"):
        chosen = engine.select_engine({})
    assert chosen.name == "python"
    assert "TypeError: chain() takes exactly 2 arguments" in caplog.text
    with pytest.raises(engine.EngineUnavailable, match="self-check"):
        engine.select_engine({engine.ENV: "native"})


@pytest.mark.parametrize("kernel", engine.KERNELS)
def test_env_forces_a_kernel_or_refuses_one_this_cpu_lacks(native, kernel, caplog):
    if kernel not in native.KERNELS:
        with pytest.raises(engine.EngineUnavailable, match=f"TM_HASH_ENGINE={kernel}, but this CPU .* no {kernel}"):
            engine.select_engine({engine.ENV: kernel})
        return
    with caplog.at_level(logging.INFO, logger="workerapp.engine"):
        chosen = engine.select_engine({engine.ENV: kernel.upper()})
    assert (chosen.name, chosen.kernel, chosen.width) == ("native", kernel, native.LANES[kernel])
    assert f"forced by TM_HASH_ENGINE={kernel}" in caplog.text
    jobs = [(b"forced %d" % i, 50 + 7 * i) for i in range(11)]
    expected_digests = [reference(data, n) for data, n in jobs]
    if chosen.compute_many is None:
        assert chosen.width == 1 and [chosen.compute(d, n) for d, n in jobs] == expected_digests
    else:
        assert chosen.compute_many(jobs) == expected_digests


def test_a_kernel_the_cpu_lacks_is_refused_by_chains(native, monkeypatch):
    digest = hashlib.sha512(b"").digest()
    with pytest.raises(ValueError, match="kernel 'sse9': this CPU has no such kernel"):
        native.chains([digest], [1], kernel="sse9")
    monkeypatch.setattr(native, "KERNELS", ("scalar",))  # a CPU without vector units, as selection sees it
    with pytest.raises(engine.EngineUnavailable, match="no avx2 kernel"):
        engine.select_engine({engine.ENV: "avx2"})
    assert engine.select_engine({}).kernel == "scalar"


def test_env_forces_python(native, caplog):
    with caplog.at_level(logging.INFO, logger="workerapp.engine"):
        chosen = engine.select_engine({engine.ENV: "python"})
    assert chosen is engine.PYTHON and chosen.compute is compute
    assert len(caplog.records) == 1 and "forced by TM_HASH_ENGINE=python" in caplog.records[0].getMessage()


def test_missing_extension_falls_back_to_python_and_says_so_once(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "workerapp._native", None)  # what a failed import looks like
    with caplog.at_level(logging.INFO, logger="workerapp.engine"):
        chosen = engine.select_engine({engine.ENV: "auto"})
    assert chosen is engine.PYTHON
    assert len(caplog.records) == 1 and caplog.records[0].levelno == logging.WARNING
    assert "workerapp._native is not built" in caplog.records[0].getMessage()
    with pytest.raises(engine.EngineUnavailable, match="TM_HASH_ENGINE=native"):
        engine.select_engine({engine.ENV: "native"})


def test_failed_self_check_falls_back_to_python(native, monkeypatch, caplog):
    monkeypatch.setattr(engine, "compute_native", lambda data, iterations, kernel=None: "0" * 128)
    with caplog.at_level(logging.INFO, logger="workerapp.engine"):
        assert engine.select_engine({}) is engine.PYTHON
    assert "failed its self-check" in caplog.text


def test_unknown_engine_name_is_refused():
    with pytest.raises(ValueError, match="TM_HASH_ENGINE='fast'"):
        engine.select_engine({engine.ENV: "fast"})


# -------------------------------------------------------------- a real worker
@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with running_cluster({"MAX_NUM_OF_WORKERS": "0"}, tmp_path_factory.mktemp("engine-cluster")) as cluster:
        yield cluster


def run_worker(cluster, tmp_path, worker_id, extra_env, pythonpath=None, args=()):
    """Enqueue three tasks, run one worker process until idle; return its stderr and the results."""
    url = cluster.urls[0]
    bodies = {f"{worker_id}-{n}".encode(): n for n in (1, 500, 20_000)}  # distinct: never answered from a twin
    tasks = {requests.put(f"{url}/enqueue", params={"iterations": n}, data=data, timeout=5).json()["id"]: (data, n)
             for data, n in bodies.items()}
    env = {**os.environ, "CLUSTER_TOKEN": cluster.token, **extra_env}
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), str(ROOT)])
    done = subprocess.run([sys.executable, "-m", "workerapp", "--worker-id", worker_id, "--idle-seconds", "0.5",
                           *args, url], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for task_id, (data, iterations) in tasks.items():
        answer = wait_for(lambda: requests.get(f"{url}/status/{task_id}", timeout=5).json().get("result"),
                          timeout=10, what=f"result of {task_id}")
        assert answer == reference(data, iterations)
    return done.stderr


@pytest.mark.integration
def test_worker_forced_to_python_works_and_says_so_once(cluster, tmp_path):
    log = run_worker(cluster, tmp_path, "w-forced", {engine.ENV: "python"})
    assert log.count("hash engine:") == 1
    assert "hash engine: python (hashlib loop, forced by TM_HASH_ENGINE=python)" in log


@pytest.mark.integration
@pytest.mark.parametrize("kernel", engine.KERNELS)
def test_worker_forced_to_a_kernel_computes_with_it_or_refuses_to_start(native, cluster, tmp_path, kernel):
    """TM_HASH_ENGINE=avx512|avx2|scalar in a real worker: its results are hashlib's (run_worker
    checks them), or, when this CPU lacks that kernel, the worker exits at once with a clear line."""
    if kernel not in native.KERNELS:
        env = {**os.environ, "CLUSTER_TOKEN": cluster.token, engine.ENV: kernel}
        done = subprocess.run([sys.executable, "-m", "workerapp", cluster.urls[0]], env=env, capture_output=True,
                              text=True, timeout=60, cwd=tmp_path)
        assert done.returncode == 2 and f"{engine.ENV}={kernel}, but this CPU" in done.stderr
        return
    log = run_worker(cluster, tmp_path, f"w-{kernel}", {engine.ENV: kernel})
    assert log.count("hash engine:") == 1
    assert f"{kernel} kernel" in log and f"forced by {engine.ENV}={kernel}" in log


@pytest.mark.integration
def test_worker_without_the_extension_uses_python_and_says_so_once(cluster, tmp_path):
    """A sitecustomize makes ``import workerapp._native`` fail, as on a machine without a compiler."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import sys\nsys.modules['workerapp._native'] = None\n")
    log = run_worker(cluster, tmp_path, "w-missing", {engine.ENV: "auto"}, pythonpath=site)
    assert log.count("hash engine:") == 1
    assert "hash engine: python (hashlib loop): workerapp._native is not built" in log


@pytest.mark.integration
def test_install_without_a_compiler_succeeds_without_the_extension(tmp_path, wheelhouse):
    """``pip wheel`` with a C compiler that always fails: the build still succeeds, pure Python
    (its build environment from the local ``wheelhouse``)."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.py", "setup.cfg", "README.md", "wsgi.py", "run_program.py"):
        shutil.copy(ROOT / name, src / name)
    for package in ("nodeapp", "workerapp", "provisioning", "tmclient", "tmcommon", "tmrun"):
        if (ROOT / package).is_dir():
            shutil.copytree(ROOT / package, src / package,
                            ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyd"))
    env = {**os.environ, "CC": "false", "PIP_NO_INPUT": "1"}
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--wheel-dir",
                            str(tmp_path / "dist"), str(src)], env=env, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    assert 'building extension "workerapp._native" failed' in built.stdout + built.stderr
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "workerapp/engine.py" in names
    assert not [n for n in names if n.startswith("workerapp/_native")]


def test_bench_engines_runs_and_reports_every_engine(tmp_path):
    """The side-by-side benchmark (bench/engines.py), tiny: figures only, no timing asserted."""
    out = tmp_path / "engines.json"
    done = subprocess.run([sys.executable, "-m", "bench.engines", "--rounds", "2", "--seconds", "0.05", "--json",
                           str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads(out.read_text())["summary"]
    assert summary["hashlib loop"]["x_hashlib"]["median"] == 1
    for name, figures in summary.items():
        if name.startswith("native") or shutil.which("openssl"):
            assert figures["per_cpu_second"]["median"] > 0, name
    assert ("native chain" in summary) == (engine._native_problem() is None)


# ------------------------------------------------------- several chains at once
def kernels():
    """Every kernel of the C extension this CPU has (none where it is not built)."""
    try:
        from workerapp import _native
    except ImportError:
        return []
    return list(_native.KERNELS)


@pytest.mark.parametrize("kernel", kernels())
def test_chains_agree_with_hashlib_on_the_vector_table(native, kernel):
    jobs = [(body(size), iterations) for size in SIZES for iterations in (1, 2, 1000)]
    jobs += [(body(size), 1_000_000) for size in (0, 129)]
    digests = native.chains([hashlib.sha512(data).digest() for data, _ in jobs], [n - 1 for _, n in jobs],
                            kernel=kernel)
    assert [d.hex() for d in digests] == [expected(len(data), n) for data, n in jobs]
    assert engine.compute_many_native(jobs[:5], kernel) == [expected(len(data), n) for data, n in jobs[:5]]


@pytest.mark.parametrize("kernel", kernels())
@settings(max_examples=40, deadline=None)
@given(jobs=st.lists(st.tuples(st.binary(max_size=200), st.integers(min_value=1, max_value=700)), max_size=19))
def test_chains_agree_with_hashlib_on_random_cases(native, kernel, jobs):
    """Any number of chains (more than the lanes, fewer, none), each of its own length: lanes
    are refilled as chains end, down to the narrow kernel and the scalar tail."""
    digests = [reference(data, iterations) for data, iterations in jobs]
    assert engine.compute_many_native(jobs, kernel) == digests


@pytest.mark.parametrize("kernel", kernels())
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), count=st.integers(1, 20), spread=st.sampled_from([1, 10, 5000]))
def test_chains_of_unequal_lengths_each_end_where_hashlib_ends(native, kernel, seed, count, spread):
    """Chains whose lengths differ by up to ``spread``: every digest is the one of its own length."""
    rng = random.Random(seed)
    jobs = [(rng.randbytes(rng.randrange(0, 130)), 1 + rng.randrange(spread)) for _ in range(count)]
    assert engine.compute_many_native(jobs, kernel) == [reference(data, n) for data, n in jobs]


def test_chains_refuses_bad_input(native):
    digest = hashlib.sha512(b"").digest()
    assert native.chains([], []) == []
    with pytest.raises(ValueError, match="same length"):
        native.chains([digest], [])
    with pytest.raises(ValueError, match="64 bytes"):
        native.chains([digest, b"short"], [1, 1])
    with pytest.raises(ValueError, match=">= 0"):
        native.chains([digest], [-1])
    with pytest.raises(TypeError):
        native.chains([digest], ["many"])
    with pytest.raises(ValueError):
        engine.compute_many_native([(b"x", 0)])
    assert native.SIMD in ("", "avx2", "avx512") and native.KERNELS[-1] == "scalar"
    assert native.SIMD == ("" if native.KERNELS[0] == "scalar" else native.KERNELS[0])
