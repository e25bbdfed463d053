"""``medsi experiment synthetic``: rerun the paper's synthetic experiments."""

from __future__ import annotations

from pathlib import Path

import click

from medsi.cli.train import _read_config

__all__ = ["experiment"]


@click.group()
def experiment() -> None:
    """Rerun the paper's experiments (type-I error, power, robustness)."""


def _split(values: tuple[str, ...]) -> list[str]:
    """Options given as repeated flags and/or comma-separated lists, as one flat list."""
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


@experiment.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="YAML: the model recipe and an 'experiment' section (see configs/synthetic.yaml); "
    "without it, the paper's settings.",
)
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), required=True, help="Output folder."
)
@click.option("--kind", multiple=True, help="iid and/or corr (repeat or comma-separate).")
@click.option("--size", type=click.IntRange(min=3), multiple=True, help="Image side(s).")
@click.option("--signal", type=float, multiple=True, help="Signal(s) of the power runs.")
@click.option("--no-power", is_flag=True, help="Skip the power runs.")
@click.option("--power-size", type=click.IntRange(min=3), help="Image side of the power runs.")
@click.option("--n", "n", type=click.IntRange(min=1), help="Images per setting.")
@click.option("--method", "methods", multiple=True, help="Methods to compute (default: all).")
@click.option("--permutations", type=click.IntRange(min=1), help="B of the permutation test.")
@click.option("--score", type=click.Choice(["absolute", "signed"]), help="Anomaly score.")
@click.option("--threshold", type=float, help="lambda [default: the model's, 0.8 in the paper].")
@click.option("--alpha", type=float, help="Significance level.")
@click.option(
    "--termination",
    type=click.Choice(["exhaustive", "precision", "decision"]),
    help="How far each selective search goes.",
)
@click.option("--precision", type=float, help="Width of the p bounds for precision.")
@click.option("--robustness", is_flag=True, help="Add the robustness runs (all noise families).")
@click.option("--family", multiple=True, help="Robustness noise families (implies --robustness).")
@click.option("--distance", type=float, multiple=True, help="Robustness W1 distances.")
@click.option(
    "--models",
    "models_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder of bundles <kind>-<size>; missing ones are trained there "
    "[default: OUTPUT/models].",
)
@click.option("--epochs", type=click.IntRange(min=1), help="Training epochs of missing models.")
@click.option(
    "--train-images",
    type=click.IntRange(min=10),
    default=1000,
    show_default=True,
    help="Normal images per trained model (training and held-out).",
)
@click.option("--seed", type=click.IntRange(min=0), help="Seed of the images [default 0].")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bars.")
def synthetic(
    config_path,
    output,
    kind,
    size,
    signal,
    no_power,
    power_size,
    n,
    methods,
    permutations,
    score,
    threshold,
    alpha,
    termination,
    precision,
    robustness,
    family,
    distance,
    models_dir,
    epochs,
    train_images,
    seed,
    workers,
    quiet,
) -> None:
    """Type-I error, power and robustness of every method on the paper's synthetic images.

    Trains (or reuses) one model per noise kind and image size, tests every image with the
    selective p (full and component events), over-conditioning, naive, Bonferroni and
    permutation, and writes results.json, summary.csv and PNG figures to OUTPUT. A stopped
    run resumes when started again with the same options.
    """
    from medsi.errors import ConfigError
    from medsi.experiments import SyntheticModels, SyntheticSettings, run_synthetic_experiment

    config = _read_config(config_path)
    values = dict(config.get("experiment") or {})
    if not isinstance(values, dict):
        raise ConfigError('the "experiment" section must be a mapping of settings.')
    given = {
        "kinds": _split(kind),
        "sizes": list(size),
        "signals": [] if no_power else list(signal),
        "n": n,
        "methods": _split(methods),
        "permutations": permutations,
        "score": score,
        "alpha": alpha,
        "termination": termination,
        "precision": precision,
        "power_size": power_size,
        "robustness_distances": list(distance),
        "seed": seed,
    }
    values.update({k: v for k, v in given.items() if v not in (None, [])})
    if no_power:
        values["signals"] = []
    families = _split(family)
    if robustness and not families:
        from medsi.data.noise import NOISE_FAMILIES

        families = list(NOISE_FAMILIES)
    if families:
        values["robustness_families"] = families
    settings = SyntheticSettings.from_mapping(values)
    recipe = {k: v for k, v in config.items() if k != "experiment"}
    models = SyntheticModels(
        folder=models_dir if models_dir is not None else output / "models",
        config=recipe,
        n_images=train_images,
        epochs=epochs,
        seed=settings.seed,
    )
    result = run_synthetic_experiment(
        settings,
        output,
        models,
        threshold=threshold,
        workers=workers,
        progress=not quiet,
        log=click.echo,
    )
    click.echo(f"Wrote {len(result['records'])} image records and the summary to {output}.")
