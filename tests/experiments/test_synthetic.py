import json

import numpy as np
import pytest

from medsi.errors import ConfigError
from medsi.experiments import (
    SyntheticSettings,
    plan_tasks,
    run_synthetic_experiment,
    run_task,
    run_tasks,
)
from medsi.experiments.synthetic import ImageTask, draw_images, read_records
from medsi.si import Isotropic, SelectiveTest


def _strip(record):
    """A record without its timings (the only part that may differ between two runs)."""
    return {k: v for k, v in record.items() if not k.startswith("seconds")}


def test_plan_covers_every_setting_once():
    settings = SyntheticSettings(
        kinds=("iid", "corr"),
        sizes=(8, 16),
        signals=(1.0, 2.0),
        n=3,
        robustness_families=("t",),
        robustness_distances=(0.05,),
    )
    tasks = plan_tasks(settings)
    assert len(tasks) == 3 * (2 * 2 + 2 * 2 + 1)
    assert len({t.task_id for t in tasks}) == len(tasks)
    assert {t.size for t in tasks if t.group == "power"} == {16}
    assert {(t.kind, t.size) for t in tasks if t.group == "robustness"} == {("iid", 8)}


def test_images_depend_only_on_seed_and_task():
    task = ImageTask("power", "corr", 9, 3.0, "normal", 0.0, 4)
    x1, r1, t1 = draw_images(task, seed=5)
    x2, r2, t2 = draw_images(task, seed=5)
    assert np.array_equal(x1, x2) and np.array_equal(r1, r2) and np.array_equal(t1, t2)
    assert t1.sum() == 9  # a 3 x 3 square: side 9 // 3
    x3, _, _ = draw_images(task, seed=6)
    assert not np.array_equal(x1, x3)
    other = ImageTask("power", "corr", 9, 3.0, "normal", 0.0, 5)
    assert not np.array_equal(x1, draw_images(other, seed=5)[0])


def test_robustness_images_come_from_the_noise_family():
    task = ImageTask("robustness", "iid", 8, 0.0, "exponnorm", 0.15, 0)
    x, r, truth = draw_images(task, seed=0)
    assert x.shape == r.shape == (8, 8) and not truth.any()
    assert not np.array_equal(x, r)


def test_record_matches_a_direct_selective_test(tiny_models):
    settings = SyntheticSettings(sizes=(8,), n=1, permutations=30, termination="exhaustive")
    path = tiny_models.path("iid", 8)
    for index in range(20):
        task = ImageTask("null", "iid", 8, 0.0, "normal", 0.0, index)
        record = run_task(task, settings, str(path), threshold=None)
        if record["tested"]:
            break
    else:
        pytest.fail("nothing was selected in 20 null images")
    from medsi.model import load_bundle

    bundle = load_bundle(path)
    x, reference, _ = draw_images(task, settings.seed)
    test = SelectiveTest(bundle.score(), 0.8, covariance=Isotropic(1.0))
    direct = test.run(x, reference, batch_size=settings.batch_size)
    assert record["p"]["proposed"] == pytest.approx(direct.p_full, abs=1e-12)
    assert record["p"]["oc"] == pytest.approx(direct.p_oc, abs=1e-12)
    assert record["evaluations"] == direct.evaluations
    assert 0 < record["p"]["permutation"] <= 1
    lo, hi = record["truncation"]["oc"]
    assert lo <= record["statistic"] <= hi
    json.dumps(record)  # JSON-ready


def test_workers_do_not_change_results(tiny_models):
    settings = SyntheticSettings(
        kinds=("iid", "corr"),
        sizes=(8,),
        signals=(3.0,),
        n=2,
        methods=("proposed", "naive"),
        termination="decision",
    )
    tasks = plan_tasks(settings)
    paths = {(k, 8): tiny_models.path(k, 8) for k in ("iid", "corr")}
    one = run_tasks(tasks, settings, paths, workers=1)
    two = run_tasks(tasks, settings, paths, workers=2)

    assert [_strip(r) for r in one] == [_strip(r) for r in two]


def test_missing_model_is_refused(tiny_models):
    settings = SyntheticSettings(sizes=(16,), n=1)
    with pytest.raises(ConfigError, match="no model for iid images of side 16"):
        run_tasks(plan_tasks(settings)[:1], settings, {})


def test_run_writes_results_and_resumes(tiny_models, tmp_path):
    settings = SyntheticSettings(
        kinds=("iid",),
        sizes=(8,),
        signals=(4.0,),
        n=4,
        methods=("proposed", "oc", "naive"),
        termination="decision",
    )
    out = tmp_path / "run"
    messages = []
    first = run_synthetic_experiment(
        settings, out, tiny_models, progress=False, log=messages.append
    )
    names = {p.name for p in first["files"]}
    assert {"results.json", "summary.csv", "records.jsonl", "type1_error.png"} <= names
    results = json.loads((out / "results.json").read_text())
    assert len(results["records"]) == 8 and results["settings"]["n"] == 4
    assert len(read_records(out / "records.jsonl")) == 8
    # a run stopped halfway: drop two records and a cut-off line, then resume
    lines = (out / "records.jsonl").read_text().splitlines()
    (out / "records.jsonl").write_text("\n".join(lines[:6]) + '\n{"task": "nu')
    messages.clear()
    second = run_synthetic_experiment(
        settings, out, tiny_models, progress=False, log=messages.append
    )
    assert any("resuming: 6 of 8 images already done" in m for m in messages)
    assert [_strip(r) for r in second["records"]] == [_strip(r) for r in first["records"]]
    with pytest.raises(ConfigError, match="holds a run with other settings"):
        run_synthetic_experiment(
            SyntheticSettings(kinds=("iid",), sizes=(8,), n=5, signals=()),
            out,
            tiny_models,
            progress=False,
            log=messages.append,
        )
