"""Benchmark of the selective-inference engine on the paper-size PL U-Net.

For each image size it measures, with random weights (timing does not depend on training):

* model evaluations per p-value (exhaustive search, null images),
* seconds per evaluation (value + tangent, float64) at several batch sizes, and the speed-up
  of batching over one point at a time,
* float64 GFLOP/s achieved by the evaluation next to a float64 matrix product on the same
  machine, in the same process.

Run ``python benchmarks/si_engine.py --help``; the figures go to stdout as a markdown table
(``--record`` appends them, with the machine and the command, to benchmarks/RESULTS.md).
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
from torch.utils.flop_counter import FlopCounterMode

from medsi.model import AnomalyScore, DDIMReconstruction, PLUNet
from medsi.si import Isotropic, LineEvaluator, SelectiveTest

# Per-evaluation times of the per-layer ONNX interpreter (one point at a time, one thread),
# measured on this kind of machine when the project started (issue "Selective-inference engine").
REFERENCE_MS = {8: 26.0, 16: 33.0, 32: 73.0, 64: 273.0}


def paper_score(size: int, device: str) -> torch.nn.Module:
    unet = PLUNet(channels=(32, 64, 128, 256), time_embed_dim=100, convs_per_block=1)
    recon = DDIMReconstruction(unet, start_timestep=460, num_steps=5, eta=1.0, seed=0)
    return AnomalyScore(recon, kernel_size=3).to(device=device, dtype=torch.float64).eval()


def matmul_gflops(device: str, n: int = 1024, repeats: int = 5) -> float:
    a = torch.randn(n, n, dtype=torch.float64, device=device)
    b = torch.randn(n, n, dtype=torch.float64, device=device)
    a @ b
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - t0) / 1e9


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def evaluation_flops(evaluator: LineEvaluator, size: int) -> float:
    """FLOPs of one line evaluation (value and tangent), counted by torch's dispatcher."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(size, size)), rng.normal(size=(size, size))
    with FlopCounterMode(display=False) as counter:
        evaluator.evaluate(a, b, np.zeros(1))
    return float(counter.get_total_flops())


def seconds_per_evaluation(evaluator, size, batch, min_seconds=2.0, device="cpu") -> float:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(size, size)), rng.normal(size=(size, size))
    z = np.linspace(-1, 1, batch)
    evaluator.evaluate(a, b, z)  # warm-up
    _sync(device)
    count, t0 = 0, time.perf_counter()
    while True:
        evaluator.evaluate(a, b, z)
        count += 1
        _sync(device)
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds and count >= 2:
            return elapsed / (count * batch)


def evaluations_per_p_value(score, size, n_images, batch, max_seconds, seed=0):
    """Exhaustive searches on null images until n_images are done or time runs out."""
    rng = np.random.default_rng(seed)
    evaluator = LineEvaluator(score, threshold=0.0)
    calib = evaluator.score_map(rng.normal(size=(4, size, size)))
    threshold = float(np.quantile(calib, 0.98))  # a few per cent of pixels selected
    test = SelectiveTest(score, threshold, covariance=Isotropic(1.0))
    counts, seconds = [], []
    t_start = time.perf_counter()
    while len(counts) < n_images and time.perf_counter() - t_start < max_seconds:
        x, r = rng.normal(size=(size, size)), rng.normal(size=(size, size))
        if not test.select(x).any():
            continue
        t0 = time.perf_counter()
        res = test.run(x, r, termination="exhaustive", batch_size=batch)
        seconds.append(time.perf_counter() - t0)
        counts.append(res.evaluations)
        print(
            f"    size {size}: image {len(counts)}: {res.evaluations} evaluations, "
            f"{seconds[-1]:.1f} s, p={res.p_full:.3g}",
            flush=True,
        )
    return threshold, counts, seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--images", type=int, default=10, help="null images per size")
    parser.add_argument("--search-batch", type=int, default=32, help="K of the p-value searches")
    parser.add_argument(
        "--max-search-seconds",
        type=float,
        default=600.0,
        help="time cap of the p-value searches per size",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--record", action="store_true", help="append to benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    gflops_matmul = matmul_gflops(args.device)
    print(f"float64 matmul: {gflops_matmul:.1f} GFLOP/s", flush=True)
    rows = []
    for size in args.sizes:
        score = paper_score(size, args.device)
        evaluator = LineEvaluator(score, threshold=0.0, device=args.device)
        flops = evaluation_flops(evaluator, size)
        per_eval = {}
        for batch in args.batch_sizes:
            per_eval[batch] = seconds_per_evaluation(evaluator, size, batch, device=args.device)
            print(
                f"  size {size}, batch {batch}: {per_eval[batch] * 1e3:.2f} ms/evaluation",
                flush=True,
            )
        best = min(per_eval, key=per_eval.get)
        threshold, counts, seconds = (
            evaluations_per_p_value(
                score, size, args.images, args.search_batch, args.max_search_seconds
            )
            if args.images > 0
            else (float("nan"), [], [])
        )
        rows.append(
            dict(
                size=size,
                flops=flops,
                per_eval=per_eval,
                best=best,
                threshold=threshold,
                counts=counts,
                seconds=seconds,
            )
        )

    table = format_results(rows, args, gflops_matmul)
    print(table)
    if args.record:
        path = Path(__file__).with_name("RESULTS.md")
        with path.open("a") as f:
            f.write(table + "\n")
        print(f"appended to {path}")
    return 0


def format_results(rows, args, gflops_matmul) -> str:
    cpu = platform.processor() or platform.machine()
    lines = [
        f"### SI engine, paper-size U-Net (32-64-128-256, emb 100, 5 DDIM steps from T'=460), "
        f"{time.strftime('%Y-%m-%d')}",
        "",
        f"Machine: {cpu}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"device {args.device}, {args.threads} threads. float64 matmul: "
        f"{gflops_matmul:.1f} GFLOP/s.",
        f"Command: `python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}`",
        "",
        "| size | evals per p (exhaustive) | s per p | "
        + " | ".join(f"ms/eval @B={b}" for b in args.batch_sizes)
        + " | batching speed-up | vs ONNX interpreter | GFLOP/eval | GFLOP/s (best B) | "
        "% of matmul |",
        "|" + "---|" * (8 + len(args.batch_sizes)),
    ]
    for row in rows:
        pe = row["per_eval"]
        counts = row["counts"]
        evals = (
            f"{np.mean(counts):.0f} ({min(counts)}-{max(counts)}, n={len(counts)})"
            if counts
            else "not run"
        )
        secs = f"{np.mean(row['seconds']):.1f}" if counts else "-"
        speedup = pe[min(pe)] / pe[row["best"]] if min(pe) in pe else float("nan")
        ref = REFERENCE_MS.get(row["size"])
        vs_ref = f"{ref / (pe[row['best']] * 1e3):.1f}x" if ref else "-"
        achieved = row["flops"] / pe[row["best"]] / 1e9
        lines.append(
            f"| {row['size']} | {evals} | {secs} | "
            + " | ".join(f"{pe[b] * 1e3:.2f}" for b in args.batch_sizes)
            + f" | {speedup:.1f}x (B={row['best']}) | {vs_ref} | {row['flops'] / 1e9:.3f} | "
            f"{achieved:.1f} | {100 * achieved / gflops_matmul:.0f}% |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
