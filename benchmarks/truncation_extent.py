"""How far the truncation set of a true lesion reaches from its statistic (issue 5: power).

A selective p-value is small only when the truncation set Z reaches well below the observed
statistic z_obs: if Z were the single interval [L, U], a lesion at z_obs = 10 sigma needs
z_obs - L of about 0.3 sigma for p < 0.05. This script walks the line of each inserted
lesion of `medsi demo` phantoms piece by piece, down and up from z_obs, until the selection
event stops holding (full: the scan's selection on the lesion's planes changes; component:
the lesion stops being the same component), and reports, in units of sigma, where it stopped,
how many pieces that took, and the p-value Z would have if it were only that stretch.

    python benchmarks/truncation_extent.py --seeds 0 --max-points 500 --reference bank --record
    python benchmarks/truncation_extent.py --seeds 0 --max-points 500 --reference same --record

The walk visits every piece in order, so its point count is the number of pieces the
exhaustive search must visit on that stretch; where it stops at --max-points, the stretch is
at least that long.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from _report import machine, publish

REFERENCES = {
    "bank": "the bundle's reference bank (other subjects)",
    "same": "a lesion-free render of the same subject with new noise (--reference)",
}


def walk(line, z_obs: float, sigma: float, direction: int, max_points: int) -> dict:
    """Pieces from z_obs in one direction until both events fail or ``max_points``."""
    z = z_obs
    ends = {"full": None, "component": None}
    points = 0
    while points < max_points and ends["component"] is None:
        lower, upper, flags, _ = line(np.array([z]))
        points += 1
        for index, name in enumerate(ends):
            if ends[name] is None and not flags[0, index]:
                ends[name] = z
        edge = lower[0] if direction < 0 else upper[0]
        if not np.isfinite(edge):
            break
        z = edge + direction * 1e-9 * sigma
    reach = {
        name: (abs(end - z_obs) / sigma if end is not None else None) for name, end in ends.items()
    }
    reach["walked"] = abs(z - z_obs) / sigma
    reach["points"] = points
    return reach


def lesion_lines(seed: int, folder: Path, reference: str):
    """Each inserted lesion's selected region of one demo phantom, with its test's line.

    ``reference``: ``"bank"`` (the bundle's reference bank: other subjects) or ``"same"``
    (a second render of the same subject without lesions, with independent noise: a
    baseline scan of the same patient, as ``--reference`` takes it).
    """
    from medsi.data import PhantomConfig, make_phantom, save_nifti
    from medsi.model import load_bundle
    from medsi.pipeline.demo import make_demo_phantom, match_lesions
    from medsi.pipeline.run import analyse_scan, default_bundle_path
    from medsi.pipeline.settings import RunSettings
    from medsi.si import SelectiveTest

    files = make_demo_phantom(folder / f"phantom{seed}", seed=seed)
    baseline = None
    if reference == "same":
        normal = make_phantom(seed, PhantomConfig(), noise_seed=10_000 + seed)
        baseline = folder / f"phantom{seed}" / "baseline.nii.gz"
        save_nifti(normal.image, normal.affine, baseline)
    bundle = load_bundle(default_bundle_path())
    analysis = analyse_scan(
        files["image"], bundle, RunSettings(termination="oc"), reference=baseline, progress=False
    )
    truth = np.asarray(nib.load(files["lesion_labels"]).dataobj)
    score = bundle.score(signed=True)
    slices, references = analysis.scan.slices, analysis.reference_slices
    for match in match_lesions(truth, analysis):
        for lesion_id in match["found"]:
            mask = analysis.grid_labels == lesion_id
            planes = np.flatnonzero(mask.any(axis=(1, 2)))
            # the window of medsi.pipeline.inference.assess_lesions
            lo, hi = max(planes[0] - 1, 0), min(planes[-1] + 2, len(slices))
            window = slice(lo, hi)
            test = SelectiveTest(
                score,
                analysis.threshold,
                covariance=analysis.covariance,
                reference_covariance=list(analysis.reference_covariances[window]),
                mask=analysis.scan.brain[window],
                connectivity=1,
            )
            region_line = test.line(slices[window], references[window], mask[window])
            yield match["truth_id"], lesion_id, planes, int(mask.sum()), region_line


def main() -> int:
    from medsi.si import selective_p_value

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--max-points", type=int, default=60, help="per direction and lesion")
    parser.add_argument("--reference", choices=["bank", "same"], default="bank")
    parser.add_argument("--record", action="store_true", help="append to benchmarks/RESULTS.md")
    args = parser.parse_args()
    rows = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for truth_id, lesion_id, planes, voxels, region_line in lesion_lines(
                seed, Path(tmp), args.reference
            ):
                z_obs, sigma = region_line.statistic, region_line.sigma
                line = region_line.line
                t0 = time.perf_counter()
                down = walk(line, z_obs, sigma, -1, args.max_points)
                up = walk(line, z_obs, sigma, +1, args.max_points)
                lower, upper, _, _ = line(np.array([z_obs]))
                oc = ((z_obs - lower[0]) / sigma, (upper[0] - z_obs) / sigma)
                stretch = []
                for name in ("full", "component"):
                    if down[name] is None or up[name] is None:
                        stretch.append("-")
                        continue
                    piece = [[z_obs - down[name] * sigma, z_obs + up[name] * sigma]]
                    stretch.append(f"{selective_p_value(piece, z_obs, sigma):.3f}")
                rows.append(
                    f"| {seed} | {truth_id} | {lesion_id} | {len(planes)} | {voxels} | "
                    f"{z_obs / sigma:.1f} | {oc[0]:.2e} / {oc[1]:.2e} | "
                    f"{_reach(down, 'full')} / {_reach(up, 'full')} | "
                    f"{_reach(down, 'component')} / {_reach(up, 'component')} | "
                    f"{down['points']} / {up['points']} | {stretch[0]} / {stretch[1]} | "
                    f"{line.evaluations} | {time.perf_counter() - t0:.0f} |"
                )
                print(rows[-1], flush=True)
    lines = [
        f"### Reach of the truncation set around true lesions, {time.strftime('%Y-%m-%d')}",
        "",
        f"Machine: {machine()}; {time.perf_counter() - start:.0f} s in all.",
        f"Command: `python benchmarks/truncation_extent.py --seeds "
        f"{' '.join(map(str, args.seeds))} --max-points {args.max_points} "
        f"--reference {args.reference}`",
        "",
        "`medsi demo` phantoms (default bundle, signed score), reference: "
        f"{REFERENCES[args.reference]}; distances from "
        "z_obs in units of sigma, down / up; '>d' means the walk stopped at --max-points "
        "after d sigma with the event still holding.",
        "",
        "| seed | true lesion | found lesion | planes | voxels | z_obs / sigma | oc piece "
        "| full event holds | component event holds | pieces walked | p if Z were that "
        "stretch (full / component) | slice evaluations | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]
    publish("\n".join(lines), args.record)
    return 0


def _reach(reach: dict, name: str) -> str:
    if reach[name] is None:
        return f">{reach['walked']:.2e}"
    return f"{reach[name]:.2e}"


if __name__ == "__main__":
    sys.exit(main())
