"""Type-I error of `medsi run` where the null holds by construction (issue 5).

Each pair is one phantom subject rendered twice with independent noise: the first render is
the scan, the second its `--reference`. No lesion was inserted, so every selected region is
a false finding and its p-values should be uniform (valid) or larger (conservative). The
same scans are also tested against the bundle's reference bank (other subjects), where H0
holds only approximately: that rate is reported, not tuned.

    python benchmarks/pipeline_null.py --pairs 30 --termination oc --workers 2 --record

Regions of one scan share its noise, so their p-values are not independent: the KS test
and the binomial interval treat them as if they were and are indicative only.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import stats


def analyse_pair(seed: int, termination: str) -> dict:
    """p-values of one same-anatomy pair, against the pair's reference and the bank."""
    import torch

    from medsi.data import make_phantom, save_nifti
    from medsi.pipeline.run import analyse_scan
    from medsi.pipeline.settings import RunSettings

    torch.set_num_threads(1)
    settings = RunSettings(termination=termination)
    out = {}
    with tempfile.TemporaryDirectory() as folder:
        scan = make_phantom(seed, noise_seed=1)
        again = make_phantom(seed, noise_seed=2)
        save_nifti(scan.image, scan.affine, f"{folder}/scan.nii.gz")
        save_nifti(again.image, again.affine, f"{folder}/reference.nii.gz")
        for name, reference in (("same anatomy", f"{folder}/reference.nii.gz"), ("bank", None)):
            analysis = analyse_scan(
                f"{folder}/scan.nii.gz", None, settings, reference=reference, progress=False
            )
            records = analysis.lesion_records()
            out[name] = {
                "decisive": [r["p_decisive"] for r in records],
                "naive": [r["p_naive"] for r in records],
                "scan_rejects": any(r["significant"] for r in records),
            }
    return out


def summarise(results: list[dict], reference: str) -> list[str]:
    rows = []
    family = np.mean([r[reference]["scan_rejects"] for r in results])
    for kind in ("decisive", "naive"):
        p = np.concatenate([r[reference][kind] for r in results]) if results else np.empty(0)
        if not len(p):
            rows.append(f"| {reference} | {kind} p | 0 | - | - | - | - |")
            continue
        rejects = int((p < 0.05).sum())
        ci = stats.binomtest(rejects, len(p)).proportion_ci(0.95)
        ks = stats.kstest(p, "uniform").pvalue
        scan_rate = f"{family:.3f}" if kind == "decisive" else "-"
        rows.append(
            f"| {reference} | {kind} p | {len(p)} | {rejects / len(p):.3f} | "
            f"[{ci.low:.3f}, {ci.high:.3f}] | {ks:.3g} | {scan_rate} |"
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=30)
    parser.add_argument("--termination", default="oc")
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--record", action="store_true", help="append to benchmarks/RESULTS.md")
    args = parser.parse_args()
    start = time.perf_counter()
    seeds = [args.seed + i for i in range(args.pairs)]
    results = []
    with concurrent.futures.ProcessPoolExecutor(
        max_workers=args.workers, mp_context=multiprocessing.get_context("spawn")
    ) as pool:
        futures = [pool.submit(analyse_pair, s, args.termination) for s in seeds]
        for i, future in enumerate(concurrent.futures.as_completed(futures), 1):
            results.append(future.result())
            print(f"  {i}/{args.pairs} pairs done, {time.perf_counter() - start:.0f} s", flush=True)
    seconds = time.perf_counter() - start
    lines = [
        f"### Type-I error of `medsi run` on null phantoms, termination {args.termination}, "
        f"{time.strftime('%Y-%m-%d')}",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; {args.workers} worker process(es); {seconds:.0f} s.",
        f"Command: `python benchmarks/pipeline_null.py {' '.join(sys.argv[1:])}`",
        "",
        f"{args.pairs} phantom subjects (seeds {seeds[0]}-{seeds[-1]}), no lesion, default "
        "bundle and settings. *same anatomy*: tested against a second render of the same "
        "subject with independent noise (H0 true); *bank*: against the bundle's reference bank "
        "of other subjects (H0 approximate). Regions of one scan are not independent: the "
        "interval and the KS p are indicative.",
        "",
        "| reference | p-value | regions | rejects at 0.05 | 95% interval | KS uniformity p | "
        "scans with a significant finding (Holm) |",
        "|---|---|---|---|---|---|---|",
    ]
    for reference in ("same anatomy", "bank"):
        lines += summarise(results, reference)
    table = "\n".join(lines) + "\n"
    print(table)
    if args.record:
        with open(Path(__file__).with_name("RESULTS.md"), "a") as f:
            f.write("\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
