"""Run the paper's synthetic experiments: every image, every method, one record each (issue 3).

Three groups of images are drawn (DESIGN.md §1, the paper's Section 5.1 and Appendix F):

``null``
    ``iid`` / ``corr`` noise of each size, signal 0, a reference image drawn the same way:
    the type-I error of each method.
``power``
    The same noise plus ``+signal`` on a square of side ``size // 3`` at a random place
    (at :attr:`SyntheticSettings.power_side`): the power of each method.
``robustness``
    iid non-Gaussian noise (:mod:`medsi.data.noise`) at given 1-Wasserstein distances from
    N(0, 1), tested as if it were Gaussian: the type-I error under a wrong noise model.

Each image is a task whose random draws depend only on the run's seed and the task's id, so
results do not depend on the number of workers or on the order of work, and an interrupted
run resumes where it stopped: records are appended to ``records.jsonl`` as they finish.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from medsi.errors import ConfigError
from medsi.experiments.settings import SyntheticSettings

__all__ = [
    "ImageTask",
    "plan_tasks",
    "run_task",
    "run_tasks",
    "SyntheticModels",
    "run_synthetic_experiment",
]


@dataclasses.dataclass(frozen=True)
class ImageTask:
    """One image of the experiment and how to test it.

    Attributes
    ----------
    group
        ``"null"``, ``"power"`` or ``"robustness"``.
    kind
        Noise model the test assumes and the model was trained on (``"iid"`` or ``"corr"``).
    size
        Image side, in pixels.
    signal
        Mean shift of the anomalous square (0 for null and robustness images).
    family
        Non-Gaussian noise family of a robustness image, else ``"normal"``.
    distance
        Its 1-Wasserstein distance from N(0, 1) (0 for Gaussian images).
    index
        Number of the image within its setting.
    """

    group: str
    kind: str
    size: int
    signal: float
    family: str
    distance: float
    index: int

    @property
    def setting(self) -> tuple:
        """The setting the image belongs to (everything but its index)."""
        return (self.group, self.kind, self.size, self.signal, self.family, self.distance)

    @property
    def task_id(self) -> str:
        """A stable name of the task, e.g. ``null/iid/8/0/normal/0/17``."""
        return "/".join(
            str(v)
            for v in (
                self.group,
                self.kind,
                self.size,
                _number(self.signal),
                self.family,
                _number(self.distance),
                self.index,
            )
        )

    def rng(self, seed: int) -> np.random.Generator:
        """The generator of this image's draws: a function of (seed, task id) only."""
        digest = hashlib.sha256(self.task_id.encode()).digest()
        return np.random.default_rng([seed, int.from_bytes(digest[:8], "little")])


def _number(value: float) -> str:
    return repr(int(value)) if float(value).is_integer() else repr(float(value))


def plan_tasks(settings: SyntheticSettings) -> list[ImageTask]:
    """All images of a run, grouped by setting (null, then power, then robustness)."""
    tasks = []
    for kind in settings.kinds:
        for size in settings.sizes:
            tasks += [
                ImageTask("null", kind, size, 0.0, "normal", 0.0, i) for i in range(settings.n)
            ]
    for kind in settings.kinds:
        for signal in settings.signals:
            tasks += [
                ImageTask("power", kind, settings.power_side, signal, "normal", 0.0, i)
                for i in range(settings.n)
            ]
    for family in settings.robustness_families:
        for distance in settings.robustness_distances:
            tasks += [
                ImageTask("robustness", "iid", settings.robustness_side, 0.0, family, distance, i)
                for i in range(settings.n)
            ]
    return tasks


def draw_images(task: ImageTask, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The test image, the reference image and the true anomaly mask of a task.

    Returns
    -------
    x, reference : numpy.ndarray
        (size, size), float64.
    truth : numpy.ndarray
        (size, size), bool: where the signal was added (all False without signal).
    """
    from medsi.data.noise import noise_images
    from medsi.data.synthetic import synthetic_images

    rng = task.rng(seed)
    if task.group == "robustness":
        x = noise_images(task.family, task.distance, task.size, 1, rng)[0]
        reference = noise_images(task.family, task.distance, task.size, 1, rng)[0]
        return x, reference, np.zeros_like(x, dtype=bool)
    images, masks = synthetic_images(task.kind, task.size, 1, rng, signal=task.signal)
    reference, _ = synthetic_images(task.kind, task.size, 1, rng)
    return images[0], reference[0], masks[0]


def _noise_covariance(kind: str, size: int):
    from medsi.data.synthetic import CORR_RHO
    from medsi.si import Dense, Isotropic

    if kind == "corr":
        return Dense.autoregressive((size, size), CORR_RHO)
    return Isotropic(1.0)


# Tests built in this process (or worker), keyed by model path, score and threshold: loading a
# bundle checks its hash and its piecewise linearity, which is worth doing once per worker.
_TESTS: dict[tuple, object] = {}


def _selective_test(model_path: str, kind: str, size: int, signed: bool, threshold):
    from medsi.model import load_bundle
    from medsi.si import SelectiveTest

    key = (model_path, kind, size, signed, threshold)
    if key not in _TESTS:
        bundle = load_bundle(model_path)
        if bundle.image_size != (size, size):
            raise ConfigError(
                f'the model "{model_path}" takes {bundle.image_size} images, not {size} x '
                f"{size}; train or choose a model of that size."
            )
        lam = bundle.config["score"]["threshold"] if threshold is None else threshold
        covariance = _noise_covariance(kind, size)
        _TESTS[key] = SelectiveTest(bundle.score(signed=signed), lam, covariance=covariance)
    return _TESTS[key]


def run_task(
    task: ImageTask, settings: SyntheticSettings, model_path: str, threshold: float | None
) -> dict:
    """Draw one image, select, and compute every method's p-value; a JSON-ready record.

    Images where nothing is selected get ``tested=False`` and no p-values (there is no
    region to test). Timings are wall-clock seconds of the selective search and of the
    permutation test, measured separately.
    """
    from medsi.si.baselines import permutation_p_value

    x, reference, truth = draw_images(task, settings.seed)
    test = _selective_test(model_path, task.kind, task.size, settings.score == "signed", threshold)
    selected = test.select(x)
    record = {"task": task.task_id, **dataclasses.asdict(task)}
    record["selected_pixels"] = int(selected.sum())
    record["tested"] = bool(selected.any())
    if not record["tested"]:
        return record
    start = time.perf_counter()
    res = test.run(
        x,
        reference,
        termination=settings.termination,
        precision=settings.precision,
        alpha=settings.alpha,
        batch_size=settings.batch_size,
    )
    record["seconds_search"] = time.perf_counter() - start
    p_permutation = None
    if "permutation" in settings.methods:
        start = time.perf_counter()
        p_permutation = permutation_p_value(
            test.select,
            x,
            reference,
            res.statistic,
            settings.permutations,
            task.rng(settings.seed + 1),
        )
        record["seconds_permutation"] = time.perf_counter() - start
    record.update(
        statistic=res.statistic,
        sigma=res.sigma,
        evaluations=res.evaluations,
        truth_overlap=float((selected & truth).sum() / selected.sum()),
        p={
            "proposed": res.p_full,
            "component": res.p_component,
            "oc": res.p_oc,
            "naive": res.p_naive,
            "bonferroni": res.p_bonferroni,
            "permutation": p_permutation,
        },
        p_bounds={"proposed": list(res.p_bounds_full), "component": list(res.p_bounds_component)},
        truncation={
            "proposed": res.intervals_full.tolist(),
            "component": res.intervals_component.tolist(),
            "oc": res.oc_interval.tolist(),
        },
    )
    return record


def _worker_init() -> None:
    import torch

    # One process per core: a second thread per process would only compete.
    torch.set_num_threads(1)


def _run_one(args) -> dict:
    return run_task(*args)


def run_tasks(
    tasks: Iterable[ImageTask],
    settings: SyntheticSettings,
    model_paths: dict[tuple[str, int], str],
    threshold: float | None = None,
    workers: int = 1,
    on_record: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Run tasks in this process (``workers`` = 1) or in a pool of processes.

    Parameters
    ----------
    tasks
        Images to test.
    settings
        The run's settings.
    model_paths
        Bundle folder per (kind, size); robustness images use the ``iid`` model.
    threshold
        lambda; None takes each bundle's ``score.threshold``.
    workers
        Processes; each runs one task at a time on one thread.
    on_record
        Called with each record as it finishes (in completion order).

    Returns
    -------
    list of dict
        The records, in the order of ``tasks``.
    """
    tasks = list(tasks)
    jobs = []
    for task in tasks:
        key = (task.kind, task.size)
        if key not in model_paths:
            raise ConfigError(f"no model for {task.kind} images of side {task.size}; train one.")
        jobs.append((task, settings, str(model_paths[key]), threshold))
    records: dict[str, dict] = {}

    def done(record):
        records[record["task"]] = record
        if on_record is not None:
            on_record(record)

    if workers <= 1:
        for job in jobs:
            done(_run_one(job))
    else:
        context = multiprocessing.get_context("spawn")  # torch and fork do not mix well
        with cf.ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init) as pool:
            futures = [pool.submit(_run_one, job) for job in jobs]
            try:
                for future in cf.as_completed(futures):
                    done(future.result())
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
    return [records[t.task_id] for t in tasks]


# ----------------------------------------------------------------------------------- models


@dataclasses.dataclass
class SyntheticModels:
    """The bundles a run needs, one per (kind, size), kept in (and trained into) a folder.

    Parameters
    ----------
    folder
        Where bundles live, as ``<folder>/<kind>-<size>``; missing ones are trained there.
    config
        Model recipe (sections model, diffusion, score, training, covariance).
    n_images
        Normal images per model (training and held-out together; the paper: 1000).
    epochs
        Training epochs; None takes the recipe's.
    seed
        Seed of the training images and of training.
    """

    folder: Path
    config: dict
    n_images: int = 1000
    epochs: int | None = None
    seed: int = 0

    def needed(self, settings: SyntheticSettings) -> list[tuple[str, int]]:
        """(kind, size) pairs the settings' tasks use, in plan order, without repeats."""
        keys = [(t.kind, t.size) for t in plan_tasks(settings)]
        return list(dict.fromkeys(keys))

    def path(self, kind: str, size: int) -> Path:
        """Folder of the bundle for one kind and size."""
        return Path(self.folder) / f"{kind}-{size}"

    def ensure(self, kind: str, size: int, progress: bool = True) -> Path:
        """Return the bundle folder for (kind, size), training the model if it is missing."""
        from medsi.data.synthetic import synthetic_images
        from medsi.model.training import train_bundle

        path = self.path(kind, size)
        if path.exists():
            return path
        cfg = {k: v for k, v in self.config.items() if k != "experiment"}
        cfg = {**cfg, "data": {**cfg.get("data", {}), "image_size": [size, size]}}
        entropy = int.from_bytes(hashlib.sha256(f"{kind}-{size}".encode()).digest()[:8], "little")
        rng = np.random.default_rng([self.seed, entropy])
        images, _ = synthetic_images(kind, size, self.n_images, rng)
        train_bundle(
            cfg,
            images,
            out=path,
            epochs=self.epochs,
            seed=self.seed,
            progress=progress,
            input_space=f"synthetic {kind} {size}x{size}, N(0, 1) margins",
            data_description=f"{self.n_images} synthetic {kind} images, seed {self.seed}",
        )
        return path


# --------------------------------------------------------------------------- records on disk


def read_records(path: Path) -> dict[str, dict]:
    """Records already in a ``records.jsonl`` (a cut-off last line is ignored)."""
    records = {}
    if not path.exists():
        return records
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # the line being written when a run was stopped
            records[record["task"]] = record
    return records


def append_record(path: Path, record: dict) -> None:
    """Append one record as a line and flush it to disk."""
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record, default=_json_value) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _json_value(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


# -------------------------------------------------------------------------------- whole run


def run_synthetic_experiment(
    settings: SyntheticSettings,
    out: str | os.PathLike,
    models: SyntheticModels,
    threshold: float | None = None,
    workers: int = 1,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Train or load the models, test every image, and write the results to ``out``.

    Files written (the summary files atomically, after the last image):
    ``settings.json`` (the settings, the threshold and each model's content hash),
    ``records.jsonl`` (one record per image, appended as images finish, so a stopped run
    resumes), ``results.json`` (settings, every record, the summary), ``summary.csv`` and
    the PNG figures of :func:`~medsi.experiments.summary.plot_summary`.

    Parameters
    ----------
    settings
        What to compute.
    out
        Output folder; a folder holding a run with other settings is refused.
    models
        Where the models are (or are trained to).
    threshold
        lambda; None takes each bundle's ``score.threshold``.
    workers
        Processes testing images in parallel.
    progress
        Show progress bars (training, images).
    log
        Receives one-line messages on what is happening.

    Returns
    -------
    dict
        ``records`` (list of dict, in plan order), ``summary`` (rows of
        :func:`~medsi.experiments.summary.summarise`) and ``files`` (paths written).

    Raises
    ------
    ConfigError
        If ``out`` holds a run with other settings or models, or a model does not fit.
    """
    from tqdm.auto import tqdm

    from medsi import __version__
    from medsi.atomic import atomic_write_text
    from medsi.experiments.summary import format_table, plot_summary, summarise, write_csv
    from medsi.model import load_bundle

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model_paths, hashes = {}, {}
    for kind, size in models.needed(settings):
        if not models.path(kind, size).exists():
            log(f"training the {kind} {size}x{size} model into {models.path(kind, size)}")
        path = models.ensure(kind, size, progress=progress)
        model_paths[(kind, size)] = path
        hashes[f"{kind}-{size}"] = load_bundle(path).content_hash
    header = {
        "settings": settings.to_dict(),
        "threshold": threshold,
        "models": hashes,
    }
    fingerprint = hashlib.sha256(json.dumps(header, sort_keys=True).encode()).hexdigest()
    header["fingerprint"] = fingerprint
    settings_path, records_path = out / "settings.json", out / "records.jsonl"
    if settings_path.exists():
        previous = json.loads(settings_path.read_text(encoding="utf-8"))
        if previous.get("fingerprint") != fingerprint:
            raise ConfigError(
                f'"{out}" holds a run with other settings or models; choose another output '
                "folder, or delete that one to start again."
            )
    else:
        records_path.unlink(missing_ok=True)
        atomic_write_text(settings_path, json.dumps(header, indent=2) + "\n")
    tasks = plan_tasks(settings)
    done = read_records(records_path)
    todo = [t for t in tasks if t.task_id not in done]
    if done:
        log(f"resuming: {len(tasks) - len(todo)} of {len(tasks)} images already done")
    with tqdm(total=len(todo), desc="images", unit="image", disable=not progress) as bar:

        def finished(record):
            append_record(records_path, record)
            done[record["task"]] = record
            bar.update()

        run_tasks(todo, settings, model_paths, threshold, workers, on_record=finished)
    records = [done[t.task_id] for t in tasks]
    rows = summarise(records, settings.alpha, settings.methods)
    results = {
        **header,
        "medsi_version": __version__,
        "summary": rows,
        "records": records,
    }
    files = [
        atomic_write_text(out / "results.json", json.dumps(results, default=_json_value) + "\n"),
        atomic_write_text(out / "summary.csv", write_csv(rows)),
    ]
    files += plot_summary(rows, settings.alpha, out)
    log(format_table(rows))
    return {"records": records, "summary": rows, "files": [settings_path, records_path, *files]}
