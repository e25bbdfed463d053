"""The paper's experiments, rerun with medsi: synthetic type-I error, power and robustness."""

from medsi.experiments.settings import METHODS, SCORES, SyntheticSettings
from medsi.experiments.summary import plot_summary, summarise
from medsi.experiments.synthetic import (
    ImageTask,
    SyntheticModels,
    plan_tasks,
    run_synthetic_experiment,
    run_task,
    run_tasks,
)

__all__ = [
    "METHODS",
    "SCORES",
    "SyntheticSettings",
    "SyntheticModels",
    "ImageTask",
    "plan_tasks",
    "run_task",
    "run_tasks",
    "run_synthetic_experiment",
    "summarise",
    "plot_summary",
]
