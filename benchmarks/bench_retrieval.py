"""Benchmark: exact text→image search, malign's chunked top-k against faiss IndexFlatIP.

Searches ``--queries`` query embeddings over ``--gallery`` gallery embeddings
(float32, L2-normalised, width ``--dim``) for the ``--k`` best by inner product,
with ``malign.evaluation.top_k_search`` (numpy BLAS backend, and optionally the
TensorFlow backend) and with faiss-cpu's exact ``IndexFlatIP``, on the same
arrays in the same run.

Each method runs in its own fresh subprocess, which builds the arrays from the
same seed (a checksum shows they are identical), then records:

* ``seconds``: wall time of the search (for faiss also ``add_seconds``, the
  copy of the gallery into the index, which a search needs first);
* ``cpu_seconds``: user + system CPU time of the method (add and search), a
  check on wall times taken while other jobs share the machine;
* ``peak_extra_mib``: peak resident memory during the method minus the
  resident memory just before it (``VmHWM`` after resetting it through
  ``/proc/self/clear_refs``, else ``ru_maxrss``), i.e. the method's working
  memory on top of the input arrays, including faiss's copy of the gallery.

The malign worker then checks its answer: indices equal to faiss's, and equal
to a float64 brute force on the first ``--check`` queries.

Usage:
    .venv/bin/python benchmarks/bench_retrieval.py                        # 10k x 1M x 640
    .venv/bin/python benchmarks/bench_retrieval.py --queries 2000 --gallery 100000 --methods malign,faiss
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

METHODS = ("malign", "faiss", "malign-tensorflow")


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def make_arrays(num_queries: int, num_gallery: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised gallery and queries; each query is a noisy copy of one gallery item.

    Built in place in chunks, so the process holds the two arrays and little else.
    """
    gallery = np.empty((num_gallery, dim), np.float32)
    rng = np.random.default_rng(seed)
    step = 65536
    for start in range(0, num_gallery, step):
        block = gallery[start : start + step]
        rng.standard_normal(out=block, dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
    rng = np.random.default_rng(seed + 1)
    targets = rng.integers(0, num_gallery, num_queries)
    queries = np.empty((num_queries, dim), np.float32)
    for start in range(0, num_queries, step):
        block = queries[start : start + step]
        rng.standard_normal(out=block, dtype=np.float32)
        block *= 1.0 / np.sqrt(dim)  # noise of norm ~1: the true item stays near the top
        block += gallery[targets[start : start + step]]
        block /= np.linalg.norm(block, axis=1, keepdims=True)
    return queries, gallery


def _checksum(a: np.ndarray) -> float:
    return float(np.float64(a[:: max(1, a.shape[0] // 997)]).sum())


def worker(args: argparse.Namespace) -> dict:
    queries, gallery = make_arrays(args.queries, args.gallery, args.dim, args.seed)
    if args.method == "faiss":
        import faiss
    elif args.method == "malign-tensorflow":
        import tensorflow as tf  # noqa: F401  (imported before the baseline is taken)
    from malign.evaluation.retrieval import plan_search, top_k_search

    budget = int(args.budget_mib * 2**20)
    result = {
        "method": args.method,
        "checksum": [_checksum(queries), _checksum(gallery)],
        "input_mib": (queries.nbytes + gallery.nbytes) / 2**20,
    }
    reset = _reset_peak()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    base_kib = _status_kib("VmRSS")
    base_max = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if args.method == "faiss":
        result["threads"] = faiss.omp_get_max_threads()
        index = faiss.IndexFlatIP(args.dim)
        t0 = time.perf_counter()
        index.add(gallery)
        result["add_seconds"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        scores, indices = index.search(queries, args.k)
        result["seconds"] = time.perf_counter() - t0
    else:
        backend = "tensorflow" if args.method == "malign-tensorflow" else "numpy"
        plan = plan_search(args.queries, args.gallery, args.dim, args.k, budget)
        result["plan"] = {"query_block": plan.query_block, "gallery_block": plan.gallery_block,
                          "lanes": plan.lanes, "working_mib": plan.working_bytes / 2**20}
        result["budget_mib"] = args.budget_mib
        t0 = time.perf_counter()
        scores, indices = top_k_search(queries, gallery, args.k, memory_budget_bytes=budget, backend=backend)
        result["seconds"] = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    result["cpu_seconds"] = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    peak_kib = _status_kib("VmHWM") if reset else None
    if peak_kib is None:
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        result["peak_source"] = "ru_maxrss"
        base = max(base_kib or 0, base_max)
    else:
        result["peak_source"] = "VmHWM after clear_refs"
        base = base_kib
    result["peak_extra_mib"] = (peak_kib - base) / 1024
    out = Path(args.workdir)
    np.save(out / f"{args.method}-indices.npy", indices.astype(np.int64))
    np.save(out / f"{args.method}-scores.npy", scores.astype(np.float32))
    if args.method == "malign" and args.check:
        # float64 brute force on the first queries (exact up to float64 rounding).
        n = min(args.check, args.queries)
        q64 = queries[:n].astype(np.float64)
        best_s = np.full((n, args.k), -np.inf)
        best_i = np.zeros((n, args.k), np.int64)
        for start in range(0, args.gallery, 100_000):
            s = q64 @ gallery[start : start + 100_000].astype(np.float64).T
            top = np.argsort(-s, axis=1, kind="stable")[:, : args.k]
            cand_s = np.concatenate([best_s, np.take_along_axis(s, top, 1)], 1)
            cand_i = np.concatenate([best_i, top + start], 1)
            order = np.argsort(-cand_s, axis=1, kind="stable")[:, : args.k]
            best_s = np.take_along_axis(cand_s, order, 1)
            best_i = np.take_along_axis(cand_i, order, 1)
        result["check_queries"] = n
        result["check_rows_equal"] = int((best_i == indices[:n]).all(axis=1).sum())
        result["check_max_score_error"] = float(np.abs(best_s - scores[:n]).max())
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--gallery", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=640)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--budget-mib", type=float, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check", type=int, default=200, help="queries checked against a float64 brute force")
    parser.add_argument("--methods", default="malign,faiss", help=f"comma-separated, from {', '.join(METHODS)}")
    parser.add_argument("--repeats", type=int, default=1, help="runs per method (interleaved)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--worker", dest="method", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.method:
        print(json.dumps(worker(args)))
        return 0

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    results = []
    with tempfile.TemporaryDirectory() as workdir:
        for repeat in range(args.repeats):
            for method in methods:
                cmd = [sys.executable, __file__, "--worker", method, "--workdir", workdir]
                for name in ("queries", "gallery", "dim", "k", "budget_mib", "seed", "check"):
                    cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
                load = os.getloadavg()[0]
                done = subprocess.run(cmd, env=env, capture_output=True, text=True)
                if done.returncode:
                    sys.stderr.write(done.stderr)
                    return done.returncode
                result = json.loads(done.stdout.strip().splitlines()[-1])
                result["repeat"] = repeat
                result["load_before"] = load
                results.append(result)
                print(json.dumps(result), file=sys.stderr)
        agreement = {}
        names = {m: Path(workdir, f"{m}-indices.npy") for m in methods}
        if names.get("faiss") and names["faiss"].exists():
            ref = np.load(names["faiss"])
            arrays = None
            for method in methods:
                if method != "faiss":
                    got = np.load(names[method])
                    differ = np.flatnonzero((got != ref).any(axis=1))
                    agreement[method] = {
                        "rows_equal_to_faiss": float(1 - differ.size / got.shape[0]),
                        "top1_equal_to_faiss": float((got[:, 0] == ref[:, 0]).mean()),
                    }
                    if differ.size:
                        arrays = arrays or make_arrays(args.queries, args.gallery, args.dim, args.seed)
                        agreement[method].update(_judge(arrays, differ, got, ref))
    checksums = {json.dumps(r["checksum"]) for r in results}
    summary = {
        "config": {k: getattr(args, k) for k in ("queries", "gallery", "dim", "k", "budget_mib", "seed")},
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "numpy": np.__version__},
        "same_arrays_in_every_worker": len(checksums) == 1,
        "results": results,
        "agreement": agreement,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    print(_markdown(summary))
    return 0


def _judge(arrays, rows, ours, faiss_rows) -> dict:
    """For rows where the two answers differ: which one a float64 ranking agrees with,
    and the largest float64 score gap between the items that were swapped."""
    queries, gallery = arrays
    ours_right = faiss_right = 0
    gap = 0.0
    for r in rows[:1000]:
        items = np.union1d(ours[r], faiss_rows[r])
        exact = gallery[items].astype(np.float64) @ queries[r].astype(np.float64)
        order = items[np.lexsort((items, -exact))][: ours.shape[1]]
        ours_right += int((order == ours[r]).all())
        faiss_right += int((order == faiss_rows[r]).all())
        kth = np.sort(exact)[::-1][ours.shape[1] - 1]
        score = dict(zip(items.tolist(), exact.tolist()))
        swapped = set(ours[r].tolist()) ^ set(faiss_rows[r].tolist())
        moved = [i for i in range(ours.shape[1]) if ours[r, i] != faiss_rows[r, i]]
        pairs = [abs(score[int(ours[r, i])] - score[int(faiss_rows[r, i])]) for i in moved]
        pairs += [abs(score[i] - kth) for i in swapped]
        gap = max(gap, max(pairs))
    return {"differing_rows": int(rows.size), "float64_agrees_with_ours": ours_right,
            "float64_agrees_with_faiss": faiss_right, "max_float64_gap_of_swapped_items": gap}


def _markdown(summary: dict) -> str:
    c = summary["config"]
    lines = [
        f"{c['queries']:,} queries x {c['gallery']:,} gallery x D={c['dim']} float32, k={c['k']}, "
        f"{summary['machine']['cpus']} CPUs; same arrays in every worker: {summary['same_arrays_in_every_worker']}",
        "",
        "| method | run | search s | index add s | CPU s | peak extra MiB | budget MiB | load before |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["results"]:
        lines.append(
            f"| {r['method']} | {r['repeat'] + 1} | {r['seconds']:.1f} | {r.get('add_seconds', 0):.1f} | "
            f"{r['cpu_seconds']:.1f} | "
            f"{r['peak_extra_mib']:.0f} | {r.get('budget_mib', '-')} | {r['load_before']:.2f} |"
        )
    for method, a in summary["agreement"].items():
        lines.append(f"\n{method} vs faiss: identical top-{c['k']} rows {a['rows_equal_to_faiss']:.4%}, "
                     f"top-1 {a['top1_equal_to_faiss']:.4%}")
        if a.get("differing_rows"):
            lines.append(f"  differing rows {a['differing_rows']}: a float64 ranking agrees with "
                         f"{method} on {a['float64_agrees_with_ours']}, with faiss on "
                         f"{a['float64_agrees_with_faiss']}; swapped items differ by at most "
                         f"{a['max_float64_gap_of_swapped_items']:.1e} in float64 score (near-ties)")
    for r in summary["results"]:
        if "check_queries" in r:
            lines.append(f"\n{r['method']} run {r['repeat'] + 1} vs float64 brute force: "
                         f"{r['check_rows_equal']}/{r['check_queries']} rows identical, "
                         f"max score error {r['check_max_score_error']:.2e}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
