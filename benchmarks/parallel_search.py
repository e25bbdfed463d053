"""Benchmark: one exact p-value by the sequential sweep vs parallel fronts, processes and Dask.

On the paper-size PL U-Net (random weights: the cost of a search does not depend on
training) and null images, every p-value is computed by each executor, in this one
process, on the same images:

* ``sequential``: one point per model evaluation, one torch thread (the baseline);
* ``fronts``: K points per batched evaluation (sweep fronts and seeds), all threads;
* ``processes``: K points per batch split over local worker processes, one thread each;
* ``dask``: K points per batch split over a Dask LocalCluster (processes, one thread each).

Reported per executor: evaluations and seconds per p-value, the speed-up over the
sequential sweep (ratio of total seconds on the same images), and how far its p-value is
from the sequential one. Run ``python benchmarks/parallel_search.py --help``; ``--record``
appends the table, the machine and the command to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from medsi.model import AnomalyScore, DDIMReconstruction, PLUNet
from medsi.si import (
    DaskLineEvaluator,
    Isotropic,
    LineEvaluator,
    ProcessLineEvaluator,
    SelectiveTest,
)

# Seconds per p-value of the per-layer interpreter (one thread) quoted by the issue on
# making the exact search fast: ~39 s at 8x8 and ~140 s at 16x16.
REFERENCE_SECONDS = {8: 39.0, 16: 140.0, 32: 740.0}


def paper_score(size: int) -> torch.nn.Module:
    del size  # the network is fully convolutional
    unet = PLUNet(channels=(32, 64, 128, 256), time_embed_dim=100, convs_per_block=1)
    recon = DDIMReconstruction(unet, start_timestep=460, num_steps=5, eta=1.0, seed=0)
    return AnomalyScore(recon, kernel_size=3).to(dtype=torch.float64).eval()


def null_images(score, size: int, n: int, seed: int):
    """Threshold at the null score's 98th percentile and n null pairs that select something."""
    rng = np.random.default_rng(seed)
    evaluator = LineEvaluator(score, threshold=0.0)
    calib = evaluator.score_map(rng.normal(size=(4, size, size)))
    threshold = float(np.quantile(calib, 0.98))
    evaluator = LineEvaluator(score, threshold)
    pairs = []
    while len(pairs) < n:
        x, r = rng.normal(size=(size, size)), rng.normal(size=(size, size))
        if evaluator.select(x).any():
            pairs.append((x, r))
    return threshold, pairs


def run_p_value(evaluator, threshold, x, r, batch, precision):
    test = SelectiveTest(evaluator, threshold, covariance=Isotropic(1.0))
    t0 = time.perf_counter()
    res = test.run(x, r, termination="precision", precision=precision, batch_size=batch)
    return res, time.perf_counter() - t0


def measure(size, args) -> list[dict]:
    score = paper_score(size)
    threshold, pairs = null_images(score, size, args.images, args.seed)
    executors = {}
    executors["sequential"] = (1, 1, lambda: LineEvaluator(score, threshold))
    executors["fronts"] = (args.batch, args.threads, lambda: LineEvaluator(score, threshold))
    if args.workers > 1:
        executors["processes"] = (
            args.batch,
            1,
            lambda: ProcessLineEvaluator(score, threshold, workers=args.workers),
        )
        if args.dask:
            executors["dask"] = (
                args.batch,
                1,
                lambda: DaskLineEvaluator(
                    score, threshold, scheduler="local", workers=args.workers
                ),
            )
    rows = []
    baseline = None
    for name, (batch, threads, make) in executors.items():
        torch.set_num_threads(threads)
        evaluator = make()
        try:
            run_p_value(evaluator, threshold, *pairs[0], batch, 0.5)  # warm-up (workers start)
            results = [
                run_p_value(evaluator, threshold, x, r, batch, args.precision) for x, r in pairs
            ]
        finally:
            if hasattr(evaluator, "close"):
                evaluator.close()
        seconds = np.array([s for _, s in results])
        evals = np.array([res.evaluations for res, _ in results])
        p = np.array([res.p_full for res, _ in results])
        bounds = np.array([res.p_bounds_full for res, _ in results])
        if baseline is None:
            baseline = {"seconds": seconds, "p": p, "bounds": bounds}
        inside = (baseline["bounds"][:, 0] - 1e-12 <= p) & (p <= baseline["bounds"][:, 1] + 1e-12)
        row = {
            "size": size,
            "executor": name,
            "batch": batch,
            "threads": threads,
            "workers": args.workers if name in ("processes", "dask") else 1,
            "evals": float(evals.mean()),
            "seconds": float(seconds.mean()),
            "speedup": float(baseline["seconds"].sum() / seconds.sum()),
            "max_dp": float(np.abs(p - baseline["p"]).max()),
            "p_in_baseline_bounds": bool(inside.all()),
            "width": float((bounds[:, 1] - bounds[:, 0]).max()),
        }
        rows.append(row)
        print(
            f"  size {size} {name:>10}: {row['evals']:.0f} evals, {row['seconds']:.1f} s per p, "
            f"{row['speedup']:.2f}x, max |dp| {row['max_dp']:.2g}",
            flush=True,
        )
    return rows


def format_rows(rows, args) -> str:
    machine = (
        f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{platform.python_version()}"
    )
    lines = [
        f"### Parallel search, paper-size U-Net, precision {args.precision}, "
        f"{time.strftime('%Y-%m-%d')}",
        "",
        f"Machine: {machine}. {args.images} null image(s) per size (x, r iid N(0,1); threshold "
        "at the null score's 98th percentile), the same images for every executor.",
        f"Command: `python benchmarks/parallel_search.py {' '.join(sys.argv[1:])}`",
        "",
        "| size | executor | K | threads | workers | evals per p | s per p | speed-up vs "
        "sequential | vs interpreter (s per p) | max abs(p - p_seq) | p within seq. bounds |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ref = REFERENCE_SECONDS.get(r["size"])
        vs_ref = f"{ref / r['seconds']:.1f}x ({ref:.0f} s)" if ref else "-"
        lines.append(
            f"| {r['size']} | {r['executor']} | {r['batch']} | {r['threads']} | {r['workers']} | "
            f"{r['evals']:.0f} | {r['seconds']:.1f} | {r['speedup']:.2f}x | {vs_ref} | "
            f"{r['max_dp']:.1e} | {'yes' if r['p_in_baseline_bounds'] else 'NO'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--images", type=int, default=3, help="null images per size")
    parser.add_argument("--batch", type=int, default=32, help="K, points per batch")
    parser.add_argument("--precision", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="for 'fronts'")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--dask", action="store_true", help="also run on a Dask LocalCluster")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--record", action="store_true", help="append to benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    rows = []
    for size in args.sizes:
        rows += measure(size, args)
    table = format_rows(rows, args)
    print(table)
    if args.record:
        with open(Path(__file__).with_name("RESULTS.md"), "a") as f:
            f.write("\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
