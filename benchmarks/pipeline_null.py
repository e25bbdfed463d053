"""Type-I error of `medsi run` where the null holds by construction (issue 5).

Each pair is one phantom subject rendered twice with independent noise: the first render is
the scan, the second its `--reference`. No lesion was inserted, so every selected region is
a false finding and its p-values should be uniform (valid) or larger (conservative).

    python benchmarks/pipeline_null.py --pairs 30 --termination oc
"""

import argparse
import tempfile
import time

import numpy as np
from scipy import stats

from medsi.data import make_phantom, save_nifti
from medsi.pipeline.run import analyse_scan
from medsi.pipeline.settings import RunSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=30)
    parser.add_argument("--termination", default="oc")
    parser.add_argument("--seed", type=int, default=100)
    args = parser.parse_args()
    settings = RunSettings(termination=args.termination)
    p_decisive, p_naive, start = [], [], time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        for i in range(args.pairs):
            scan = make_phantom(args.seed + i, noise_seed=1)
            again = make_phantom(args.seed + i, noise_seed=2)
            save_nifti(scan.image, scan.affine, f"{folder}/scan.nii.gz")
            save_nifti(again.image, again.affine, f"{folder}/reference.nii.gz")
            analysis = analyse_scan(
                f"{folder}/scan.nii.gz",
                None,
                settings,
                reference=f"{folder}/reference.nii.gz",
                progress=False,
            )
            for record in analysis.lesion_records():
                p_decisive.append(record["p_decisive"])
                p_naive.append(record["p_naive"])
    p_decisive, p_naive = np.array(p_decisive), np.array(p_naive)
    print(
        f"{args.pairs} same-anatomy pairs, {len(p_decisive)} selected regions, "
        f"{time.perf_counter() - start:.0f} s, termination {args.termination}"
    )
    for name, p in (("decisive p", p_decisive), ("naive p", p_naive)):
        print(
            f"{name:>11}: rejects {np.mean(p < 0.05):.3f} at 0.05, "
            f"KS uniformity p = {stats.kstest(p, 'uniform').pvalue:.3g}"
        )


if __name__ == "__main__":
    main()
