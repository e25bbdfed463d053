"""Detection rate of `medsi demo` over many phantoms, at the default settings (issue 5).

Each phantom is what `medsi demo --seed S` makes: a FLAIR-like subject with three lesions
(radius 6-12 mm) and, with the default `--baseline`, a lesion-free scan of the same subject
with independent noise as the reference. A true lesion is *detected* when a found lesion
overlapping it is significant after Holm at alpha 0.05; a *false finding* is a significant
lesion that overlaps no true lesion and none of the oedema around one (both are changes
from the baseline).

    python benchmarks/demo_detection.py --seeds 0 1 2 3 4 --workers 2 --record

Each finished phantom is appended to --results (JSON lines), so an interrupted run goes on
where it stopped; --record writes the table of every phantom in that file.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _report import machine, publish


def analyse_phantom(seed: int, baseline: bool) -> dict:
    """One demo phantom through `medsi run` at the default settings."""
    import nibabel as nib
    import torch

    from medsi.pipeline.demo import make_demo_phantom, match_lesions
    from medsi.pipeline.run import analyse_scan
    from medsi.pipeline.settings import RunSettings

    torch.set_num_threads(1)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        files = make_demo_phantom(folder, seed=seed, baseline=baseline)
        made = time.perf_counter() - start
        analysis = analyse_scan(
            files["image"], None, RunSettings(), reference=files["baseline"], progress=False
        )
        truth = np.asarray(nib.load(files["lesion_labels"]).dataobj)
        oedema = np.asarray(nib.load(files["oedema_mask"]).dataobj) > 0
        rows = match_lesions(truth, analysis)
    records = analysis.lesion_records()
    matched = {i for r in rows for i in r["found"]}
    # a finding on the oedema around a lesion is a true change too, not a false finding
    changed = (truth > 0) | oedema
    matched |= {int(i) for i in np.unique(analysis.native_labels[changed]) if i > 0}
    significant = [
        {
            "id": r["id"],
            "voxels": r["voxels"],
            "z": r["z"],
            "p_holm": r["p_holm"],
            "on_lesion_or_oedema": r["id"] in matched,
        }
        for r in records
        if r["significant"]
    ]
    return {
        "seed": seed,
        "baseline": baseline,
        "true_lesions": len(rows),
        "detected": sum(r["detected"] for r in rows),
        "found": sum(bool(r["found"]) for r in rows),
        "lesions": len(records),
        "false_findings": sum(r["significant"] for r in records if r["id"] not in matched),
        "undecided": sum(not r["search_complete"] for r in records),
        "slice_evaluations": sum(r["evaluations"] for r in records),
        "significant": significant,
        "seconds": {"make": made, **analysis.seconds, "total": time.perf_counter() - start},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(20)))
    parser.add_argument("--bank", action="store_true", help="reference bank, not a baseline")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--results", type=Path, default=Path("demo_detection.jsonl"))
    parser.add_argument("--record", action="store_true", help="append to benchmarks/RESULTS.md")
    args = parser.parse_args()
    baseline = not args.bank
    done = {}
    if args.results.exists():
        for line in args.results.read_text().splitlines():
            row = json.loads(line)
            if row["baseline"] == baseline:
                done[row["seed"]] = row
    todo = [s for s in args.seeds if s not in done]
    start = time.perf_counter()
    with concurrent.futures.ProcessPoolExecutor(
        max_workers=args.workers, mp_context=multiprocessing.get_context("spawn")
    ) as pool:
        futures = [pool.submit(analyse_phantom, s, baseline) for s in todo]
        for future in concurrent.futures.as_completed(futures):
            row = future.result()
            done[row["seed"]] = row
            with open(args.results, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(
                f"seed {row['seed']}: {row['detected']}/{row['true_lesions']} detected, "
                f"{row['false_findings']} false finding(s), {row['seconds']['total']:.0f} s, "
                f"{time.perf_counter() - start:.0f} s so far",
                flush=True,
            )
    rows = [done[s] for s in sorted(done) if s in args.seeds]
    if not rows:
        return 1
    true_total = sum(r["true_lesions"] for r in rows)
    detected = sum(r["detected"] for r in rows)
    seconds = np.array([r["seconds"]["total"] for r in rows])
    inference = np.array([r["seconds"]["inference"] for r in rows])
    reference = "a lesion-free baseline of the same subject" if baseline else "the reference bank"
    lines = [
        f"### `medsi demo` detection over {len(rows)} phantoms, reference: {reference}, "
        f"{time.strftime('%Y-%m-%d')}",
        "",
        f"Machine: {machine()}; {args.workers} worker process(es) of one thread.",
        f"Command: `python benchmarks/demo_detection.py --seeds "
        f"{' '.join(map(str, args.seeds))}{' --bank' if args.bank else ''} "
        f"--workers {args.workers}`",
        "",
        "Default settings (decision termination, 1024 slice evaluations per lesion, signed "
        "score, full event, alpha 0.05, Holm across each scan's lesions).",
        "",
        "| seed | true lesions | found | detected | lesions tested | undecided (budget) | "
        "false findings | slice evaluations | inference s | total s |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *(
            f"| {r['seed']} | {r['true_lesions']} | {r['found']} | {r['detected']} | "
            f"{r['lesions']} | {r['undecided']} | {r['false_findings']} | "
            f"{r['slice_evaluations']} | {r['seconds']['inference']:.0f} | "
            f"{r['seconds']['total']:.0f} |"
            for r in rows
        ),
        "",
        f"Detected {detected} of {true_total} inserted lesions ({detected / true_total:.0%}); "
        f"{sum(r['false_findings'] for r in rows)} false finding(s) in {len(rows)} scans. "
        f"Time per phantom: median {np.median(seconds):.0f} s "
        f"(inference {np.median(inference):.0f} s).",
        "",
    ]
    publish("\n".join(lines), args.record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
