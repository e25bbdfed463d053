"""float64 convolutions on the CPU: torch's Conv2d against ShiftedConv2d (issue 4).

One line evaluation (value and tangent, forward AD through the recorder) of the default
MRI model at 64 x 64, for batches of K slice images, with the model's convolutions run by
torch's float64 convolution or as channel products per kernel offset
(`medsi.si.line.ShiftedConv2d`). The two are timed alternately in the same process (median
of --repeats), so load from other work affects both alike; the pieces they give are
compared too.

    python benchmarks/conv_paths.py --record
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from _report import machine, publish


def main() -> int:
    import torch

    from medsi.model import load_bundle
    from medsi.pipeline.run import default_bundle_path
    from medsi.si import LineEvaluator
    from medsi.si.line import ShiftedConv2d

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--model",
        choices=["default", "paper", "tiny"],
        default="default",
        help="the default MRI bundle (64 x 64), or untrained PL U-Nets with the paper's "
        "channels (32-64-128-256) or tiny ones (8-16) at --size",
    )
    parser.add_argument("--size", type=int, default=8, help="image side for paper and tiny")
    parser.add_argument("--record", action="store_true", help="append to benchmarks/RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.model == "default":
        bundle = load_bundle(default_bundle_path())
        size, name = 64, "default MRI model at 64 x 64"
        evaluator = LineEvaluator(bundle.score(signed=True), bundle.config["score"]["threshold"])
    else:
        from medsi.model import AnomalyScore, DDIMReconstruction, PLUNet

        channels = (32, 64, 128, 256) if args.model == "paper" else (8, 16)
        unet = PLUNet(channels=channels)
        score = AnomalyScore(DDIMReconstruction(unet, seed=0)).double().eval()
        size = args.size
        name = f"PL U-Net {'-'.join(map(str, channels))} at {size} x {size} (random weights)"
        evaluator = LineEvaluator(score, 0.8)
    rng = np.random.default_rng(0)
    # (min_batch, min_work) of ShiftedConv2d for each path
    paths = {"Conv2d": (10**9, 0), "ShiftedConv2d": (1, 0)}
    default = ShiftedConv2d.min_batch, ShiftedConv2d.min_work
    rows = []
    for k in args.batch_sizes:
        a = rng.normal(size=(k, size, size))
        b = rng.normal(size=(k, size, size)) * 0.01
        z = rng.normal(size=k) * 0.1
        times = {name: [] for name in paths}
        pieces = {}
        for _ in range(args.repeats + 1):  # the first round warms up
            for name, (min_batch, min_work) in paths.items():
                ShiftedConv2d.min_batch, ShiftedConv2d.min_work = min_batch, min_work
                start = time.perf_counter()
                pieces[name] = evaluator.evaluate(a, b, z)
                times[name].append((time.perf_counter() - start) / k * 1000)
        conv, shifted = (float(np.median(times[name][1:])) for name in paths)
        same = bool((pieces["Conv2d"].selected == pieces["ShiftedConv2d"].selected).all())
        width = np.maximum(pieces["Conv2d"].upper - pieces["Conv2d"].lower, 1e-300)
        moved = float(
            np.max(
                np.abs(pieces["Conv2d"].lower - pieces["ShiftedConv2d"].lower) / width
                + np.abs(pieces["Conv2d"].upper - pieces["ShiftedConv2d"].upper) / width
            )
        )
        rows.append(
            f"| {k} | {conv:.1f} | {shifted:.1f} | {conv / shifted:.2f}x | "
            f"{'yes' if same else 'NO'} | {moved:.1e} |"
        )
        print(rows[-1], flush=True)
    ShiftedConv2d.min_batch, ShiftedConv2d.min_work = default
    lines = [
        f"### float64 convolution paths, {name}, {time.strftime('%Y-%m-%d')}",
        "",
        f"Machine: {machine()}, torch {torch.__version__}, "
        f"{args.threads} thread(s); median of {args.repeats}, the two paths alternating.",
        f"Command: `python benchmarks/conv_paths.py --model {args.model} --size {args.size} "
        f"--repeats {args.repeats} --threads {args.threads}`",
        "",
        "| K (slice images per batch) | Conv2d ms/image | ShiftedConv2d ms/image | speed-up "
        "| same selections | largest change of a piece end (share of its width) |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        f"medsi uses ShiftedConv2d on the CPU for calls of {default[0]} or more images and "
        f"{default[1]} or more multiply-adds per kernel offset (smaller ones keep Conv2d).",
        "",
    ]
    publish("\n".join(lines), args.record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
