"""Hash engines side by side: SHA-512 chain iterations per second per core, in one run.

``python -m bench.engines [--rounds 5] [--seconds 1.0]``

Each round measures, one after the other in an order rotated from round to round:

* *hashlib loop*: ``workerapp.compute.compute`` (``hashlib.sha512(d).digest()`` per iteration);
* *native chain*: ``workerapp._native.chain`` (C, one SHA-512 compression per iteration);
* *native lanes*: one native chain per available CPU, each in its own thread, at the same time;
* *native SIMD*: ``workerapp._native.chains`` with each vector kernel this CPU has, as many chains
  at once as it has lanes (AVX-512: 8, AVX2: 4), in one thread;
* *OpenSSL*: ``openssl speed -evp sha512 -bytes 64``, OpenSSL's own figure for one 64-byte
  message per call (what a C loop over OpenSSL's EVP calls would reach).

Rates are per CPU second of this process (``time.process_time``; OpenSSL's speed reports user
CPU time too), so the other users of a shared machine change them little; the wall-clock rate is
printed beside them (for the lanes: of all lanes together). The table gives medians [min-max] over the
rounds, and each engine's ratio to the hashlib loop measured in the same round.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import threading
import time

from bench.common import fmt_spread, loadavg, machine, print_table, spread, write_json
from tmcommon.cpus import available_cpus
from workerapp.compute import compute, measure_hash_rate
from workerapp.engine import compute_native

SEED = bytes(64)


def native_available() -> bool:
    try:
        import workerapp._native  # noqa: F401
    except ImportError:
        return False
    return True


def lanes(seconds: float, count: int) -> dict:
    """``count`` native chains in as many threads at once: iterations per CPU second (per core),
    and of all lanes together per wall second (what one worker with ``count`` lanes does)."""
    from workerapp._native import chain

    done = [0] * count
    stop = threading.Event()

    def run(lane: int) -> None:
        digest = SEED
        while not stop.is_set():
            digest = chain(digest, 20_000)
            done[lane] += 20_000

    threads = [threading.Thread(target=run, args=(lane,)) for lane in range(count)]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {"cpu": sum(done) / cpu, "wall": sum(done) / wall}


def simd(seconds: float, kernel: str) -> dict:
    """As many native chains at once as ``kernel`` has vector lanes (``chains``), one thread."""
    from workerapp._native import LANES, chains

    width = LANES[kernel]
    done, digests = 0, [SEED[:-1] + bytes([i]) for i in range(width)]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    while time.process_time() - cpu0 < seconds:
        digests = chains(digests, [5_000] * width, kernel)
        done += 5_000 * width
    return {"cpu": done / (time.process_time() - cpu0), "wall": done / (time.perf_counter() - wall0)}


def openssl(seconds: float) -> dict | None:
    """``openssl speed -evp sha512 -bytes 64``: 64-byte hashes per (user CPU) second, or None."""
    binary = shutil.which("openssl")
    if binary is None:
        return None
    done = subprocess.run([binary, "speed", "-evp", "sha512", "-bytes", "64", "-seconds", str(max(1, round(seconds)))],
                          capture_output=True, text=True, timeout=120)
    match = re.search(r"^sha512\s+([0-9.]+)k\s*$", done.stdout, re.M)
    if done.returncode != 0 or match is None:
        return None
    return {"cpu": float(match.group(1)) * 1000 / 64}


def measure_round(order: list[str], seconds: float, cpus: int) -> dict:
    measured = {}
    for name in order:
        if name == "hashlib loop":
            wall = measure_hash_rate(seconds, compute_fn=compute)
            measured[name] = {"cpu": measure_hash_rate(seconds, clock=time.process_time), "wall": wall}
        elif name == "native chain":
            wall = measure_hash_rate(seconds, compute_fn=compute_native)
            measured[name] = {"cpu": measure_hash_rate(seconds, clock=time.process_time, compute_fn=compute_native),
                              "wall": wall}
        elif name == f"native lanes ({cpus})":
            measured[name] = lanes(seconds, cpus)
        elif name.startswith("native SIMD"):
            measured[name] = simd(seconds, name.split("(")[1].split(",")[0])
        elif name == "OpenSSL (openssl speed)":
            measured[name] = openssl(seconds)
    return measured


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.engines", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0, help="per engine and round")
    parser.add_argument("--json", help="write the JSON here instead of bench/results/engines-<time>.json")
    args = parser.parse_args(argv)
    cpus = available_cpus()
    names = ["hashlib loop"]
    if native_available():
        from workerapp._native import KERNELS, LANES

        names += ["native chain", f"native lanes ({cpus})"]
        names += [f"native SIMD ({kernel}, {LANES[kernel]} chains)" for kernel in KERNELS if LANES[kernel] > 1]
    names.append("OpenSSL (openssl speed)")
    rounds = []
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        rounds.append({"order": order, "loadavg": loadavg(), "rates": measure_round(order, args.seconds, cpus)})
        print(f"round {r + 1}/{args.rounds} done (loadavg {rounds[-1]['loadavg']:.1f})", flush=True)
    rows, summary = [], {}
    for name in names:
        cpu = [(run["rates"].get(name) or {}).get("cpu") for run in rounds]
        wall = [(run["rates"].get(name) or {}).get("wall") for run in rounds]
        ratio = [(run["rates"].get(name) or {}).get("cpu", 0) / run["rates"]["hashlib loop"]["cpu"]
                 if run["rates"].get(name) else None for run in rounds]
        summary[name] = {"per_cpu_second": spread(cpu), "per_wall_second": spread(wall), "x_hashlib": spread(ratio)}
        rows.append([name, fmt_spread(spread(cpu)), fmt_spread(spread(wall)), fmt_spread(spread(ratio))])
    if not native_available():
        rows.append(["native chain", "not built (pip install needs a C compiler)", "-", "-"])
    loads = spread(run["loadavg"] for run in rounds)
    print_table(f"SHA-512 chain iterations/s per core ({args.rounds} interleaved rounds of {args.seconds:g} s, "
                f"medians [min-max]; 1-min loadavg {fmt_spread(loads)})",
                ["engine", "per CPU second", "per wall second", "x hashlib loop (same round)"], rows)
    write_json("engines", {"machine": machine(), "cpus": cpus, "rounds": rounds, "summary": summary}, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
