"""Throughput of `medsi serve` behind a real Orthanc (issue 7).

A `medsi serve` node runs as its own process (the CLI, as a PACS engineer starts it) with
`--forward` to a throwaway Orthanc on loopback; dcmtk's storescu plays the scanners. First one
series is sent alone (the baseline, in the same run); then N series are sent at once, one
storescu association each. For every series the clock runs from the start of its send until
its SR (and SEG, when the series has a finding) can be found in Orthanc through its REST API.

    python benchmarks/pacs_serve.py --series 10 --record

Needs the Debian packages orthanc, orthanc-dicomweb and dcmtk. The node analyses one series
after the other, so the concurrent figure is bounded by the analysis time; what it shows is
that N associations at once lose nothing and how much of the receive and send work overlaps
with the analyses.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.pacs.orthanc_server import free_port, missing_tools, start_orthanc  # noqa: E402

NODE_AET = "MEDSI"
SCANNER_AET = "SCANNER"


def make_series(folder: Path, count: int, spacing_mm: float) -> list[tuple[str, list[Path]]]:
    """``count + 1`` phantom MR series with one lesion each: (StudyInstanceUID, files)."""
    import pydicom

    from medsi.data import LesionConfig, PhantomConfig, make_phantom
    from medsi.transforms.io import write_dicom_series

    config = PhantomConfig(spacing_mm=spacing_mm, lesions=LesionConfig(count=1))
    made = []
    for k in range(count + 1):
        phantom = make_phantom(100 + k, config)
        files = write_dicom_series(
            phantom.image,
            phantom.affine,
            folder / f"series{k:02d}",
            rescale=(0.001, 0.0),
            attributes={"PatientName": f"Bench^{k}", "PatientID": f"BENCH-{k}"},
        )
        study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        made.append((study, files))
    return made


def start_node(folder: Path, orthanc, quiet_seconds: float, termination: str):
    port = free_port()
    command = [
        *(sys.executable, "-c", "from medsi.cli import main; main()", "serve"),
        *("--aet", NODE_AET, "--port", str(port), "--allow", SCANNER_AET),
        *("--forward", orthanc.destination, "--out", str(folder / "serve")),
        *("--quiet-seconds", str(quiet_seconds), "--termination", termination, "--quiet"),
    ]
    log = open(folder / "serve.log", "w")  # noqa: SIM115 (kept open for the process)
    process = subprocess.Popen(command, stderr=log, stdout=log, text=True)
    end = time.monotonic() + 120
    while time.monotonic() < end:
        if process.poll() is not None:
            break
        echo = subprocess.run(
            ["echoscu", "-aet", SCANNER_AET, "-aec", NODE_AET, "127.0.0.1", str(port)],
            capture_output=True,
            check=False,
        )
        if echo.returncode == 0:
            return process, port, log
        time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"medsi serve did not come up:\n{(folder / 'serve.log').read_text()}")


def results_in_orthanc(orthanc, study: str) -> set[str]:
    """The result modalities (SR, SEG) Orthanc holds for one study."""
    found = set()
    for modality in ("SR", "SEG"):
        query = {"Level": "Series", "Query": {"StudyInstanceUID": study, "Modality": modality}}
        if orthanc.post("/tools/find", query):
            found.add(modality)
    return found


def send_and_wait(orthanc, port: int, batch, timeout: float) -> dict:
    """Send every series of ``batch`` at once; wait until each one's SR is in Orthanc."""
    start = time.perf_counter()

    def send(files):
        done = subprocess.run(
            ["storescu", "-aet", SCANNER_AET, "-aec", NODE_AET, "127.0.0.1", str(port)]
            + [str(f) for f in files],
            capture_output=True,
            text=True,
            check=False,
        )
        return done.returncode, time.perf_counter() - start, done.stderr[-500:]

    with concurrent.futures.ThreadPoolExecutor(len(batch)) as pool:
        sends = list(pool.map(send, [files for _, files in batch]))
    failed_sends = [s for s in sends if s[0] != 0]
    stored_at = max(s[1] for s in sends)
    arrived: dict[str, tuple[float, set[str]]] = {}
    end = time.monotonic() + timeout
    while len(arrived) < len(batch) and time.monotonic() < end:
        for study, _ in batch:
            if study in arrived:
                continue
            found = results_in_orthanc(orthanc, study)
            if "SR" in found:
                arrived[study] = (time.perf_counter() - start, found)
        time.sleep(0.25)
    latencies = [t for t, _ in arrived.values()]
    return {
        "series": len(batch),
        "instances": sum(len(files) for _, files in batch),
        "failed_sends": failed_sends,
        "stored_s": stored_at,
        "arrived": len(arrived),
        "with_seg": sum("SEG" in found for _, found in arrived.values()),
        "last_s": max(latencies) if latencies else float("nan"),
        "median_s": float(np.median(latencies)) if latencies else float("nan"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=10, help="series sent at once")
    parser.add_argument("--spacing", type=float, default=2.0, help="phantom voxel size, mm")
    parser.add_argument("--quiet-seconds", type=float, default=2.0)
    parser.add_argument("--termination", default="oc")
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--record", action="store_true", help="append to benchmarks/RESULTS.md")
    args = parser.parse_args()
    reason = missing_tools()
    if reason is not None:
        print(reason, file=sys.stderr)
        return 1

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print(f"making {args.series + 1} phantom series ...", file=sys.stderr)
        series = make_series(folder / "series", args.series, args.spacing)
        orthanc = start_orthanc(
            folder / "orthanc", modalities={"medsi": (NODE_AET, "127.0.0.1", free_port())}
        )
        node = None
        try:
            node, port, log = start_node(folder, orthanc, args.quiet_seconds, args.termination)
            print("baseline: one series alone ...", file=sys.stderr)
            alone = send_and_wait(orthanc, port, series[:1], args.timeout)
            print(f"{args.series} series at once ...", file=sys.stderr)
            together = send_and_wait(orthanc, port, series[1:], args.timeout)
        finally:
            if node is not None:
                node.terminate()
                node.wait(60)
                log.close()
            orthanc.stop()

    per_series = alone["last_s"]
    throughput = together["arrived"] / together["last_s"] * 60
    speedup = together["arrived"] * per_series / together["last_s"]
    lines = [
        f"### medsi serve, {args.series} series at once, {time.strftime('%Y-%m-%d')}",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}. Phantom MR series at {args.spacing:g} mm "
        f"({series[0][1].__len__()} instances each), default model, "
        f"`--termination {args.termination}`, `--quiet-seconds {args.quiet_seconds:g}`; "
        "storescu (dcmtk) in, Orthanc out, on loopback.",
        f"Command: `python benchmarks/pacs_serve.py --series {args.series}"
        f" --spacing {args.spacing:g} --termination {args.termination} --record`",
        "",
        "| run | series | instances | failed sends | all stored (s) | results in Orthanc "
        "| with SEG | median latency (s) | last result (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in (("one alone (baseline)", alone), (f"{args.series} at once", together)):
        lines.append(
            f"| {name} | {r['series']} | {r['instances']} | {len(r['failed_sends'])} | "
            f"{r['stored_s']:.1f} | {r['arrived']}/{r['series']} | {r['with_seg']} | "
            f"{r['median_s']:.1f} | {r['last_s']:.1f} |"
        )
    lines += [
        "",
        f"Throughput: {throughput:.2f} series/min with {args.series} at once; "
        f"{speedup:.2f}x the rate of one series alone ({60 / per_series:.2f} series/min). "
        f"Receiving all {together['instances']} instances took {together['stored_s']:.1f} s "
        f"({together['instances'] / together['stored_s']:.0f} instances/s).",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    for r in (alone, together):
        for code, _, stderr in r["failed_sends"]:
            print(f"storescu failed ({code}): {stderr}", file=sys.stderr)
    if args.record:
        with open(Path(__file__).with_name("RESULTS.md"), "a") as f:
            f.write("\n" + text)
    complete = all(r["arrived"] == r["series"] and not r["failed_sends"] for r in (alone, together))
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
