"""``medsi train``: train the PL U-Net on normal images and write a model bundle."""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["train"]


def _read_config(path: Path | None) -> dict:
    """Read a YAML recipe (a mapping of sections); ``{}`` when no file is given."""
    import yaml

    from medsi.errors import ConfigError

    if path is None:
        return {}
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(
            f'"--config" must be a readable YAML file, got {str(path)!r}, which gives: {e}; fix '
            "the file."
        ) from e
    if cfg is None:
        return {}
    if not isinstance(cfg, dict):
        raise ConfigError(
            f'"--config" must hold a mapping of sections (model, diffusion, training, ...), got '
            f"{type(cfg).__name__} in {str(path)!r}; write it as section: key: value."
        )
    return cfg


@click.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="YAML recipe; keys it leaves out take the defaults (e.g. configs/train_paper.yaml).",
)
@click.option(
    "--data",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder of normal slices (.npy, .nii, .nii.gz) to train on.",
)
@click.option(
    "--synthetic",
    type=click.Choice(["iid", "corr"]),
    help="Train on the paper's synthetic noise images instead of --data.",
)
@click.option(
    "--phantoms",
    type=click.IntRange(min=3),
    help="Train the MRI model on N normal brain phantoms, prepared on the model grid as "
    "medsi run prepares a scan (a quarter of the subjects held out); the recipe defaults to "
    "the shipped model's.",
)
@click.option(
    "--size",
    type=click.IntRange(min=1),
    help="Side of the synthetic images [default: the config's data.image_size].",
)
@click.option(
    "--n-images",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Number of synthetic images (training and held-out together).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="Folder to write the model bundle to.",
)
@click.option("--epochs", type=click.IntRange(min=1), help="Epochs [default: the config's].")
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    help="Seed of the data split, the synthetic images and training [default: the config's].",
)
@click.option("--device", default="cpu", show_default=True, help="Torch device, e.g. cuda.")
@click.option(
    "--checkpoint-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for training checkpoints [default: OUTPUT.checkpoints next to the bundle].",
)
@click.option("--resume", is_flag=True, help="Continue from the checkpoint of an interrupted run.")
@click.option("--overwrite", is_flag=True, help="Replace an existing bundle at OUTPUT.")
@click.option("--quiet", is_flag=True, help="No progress bar or summary; print only the bundle.")
def train(
    config_path: Path | None,
    data: Path | None,
    synthetic: str | None,
    phantoms: int | None,
    size: int | None,
    n_images: int,
    output: Path,
    epochs: int | None,
    seed: int | None,
    device: str,
    checkpoint_dir: Path | None,
    resume: bool,
    overwrite: bool,
    quiet: bool,
) -> None:
    """Train the diffusion model on normal images and write a model bundle to OUTPUT.

    The images (--data DIR, or --synthetic iid|corr) are split into a training part and a
    held-out part (training.heldout_fraction); the U-Net learns on the first, and the noise
    covariance and reference bank of the bundle are estimated on the second.
    """
    if sum(v is not None for v in (data, synthetic, phantoms)) != 1:
        raise click.UsageError(
            "Give exactly one of --data DIR, --synthetic iid|corr and --phantoms N."
        )
    if phantoms is not None:
        _train_on_phantoms(config_path, phantoms, output, epochs, seed, overwrite, quiet)
        return
    if data is not None and size is not None:
        raise click.UsageError("--size applies to --synthetic only; --data images keep theirs.")

    import numpy as np

    from medsi.model.config import validate_config
    from medsi.model.training import train_bundle

    cfg = validate_config(_read_config(config_path))
    seed = cfg["training"]["seed"] if seed is None else seed
    if synthetic is not None:
        from medsi.data import synthetic_images

        if size is None:
            height, width = cfg["data"]["image_size"]
            if height != width:
                raise click.UsageError(
                    f"--size is needed: the config's data.image_size {[height, width]} is not "
                    "square."
                )
            size = height
        rng = np.random.default_rng(seed)
        images, _ = synthetic_images(synthetic, size, n_images, rng)
        positions = None
        input_space = f"synthetic {synthetic} {size}x{size}"
        description = f"synthetic {synthetic} {size}x{size}, {n_images} images, seed {seed}"
    else:
        from medsi.data import load_slices

        images, positions = load_slices(data)
        height, width = images.shape[1:]
        input_space = f"slices like those in {data} ({height}x{width})"
        description = f"{data}: {len(images)} slices of {height}x{width}"

    if checkpoint_dir is None:
        checkpoint_dir = output.with_name(output.name + ".checkpoints")
    bundle = train_bundle(
        cfg,
        images,
        positions,
        out=output,
        epochs=epochs,
        seed=seed,
        device=device,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        progress=not quiet,
        input_space=input_space,
        data_description=description,
        overwrite=overwrite,
    )
    if quiet:
        click.echo(str(output))
        return
    record = bundle.training
    click.echo(f"Bundle written to {output}")
    click.echo(
        f"  {record['epochs']} epochs on {record['n_train']} images, final loss "
        f"{record['final_loss']:.4f}; covariance and reference from {record['n_heldout']} "
        f"held-out images; checkpoints in {checkpoint_dir}"
    )
    click.echo(f"  content hash {bundle.content_hash[:12]}")
    click.echo(f"Next: medsi info {output}")


def _train_on_phantoms(config_path, phantoms, output, epochs, seed, overwrite, quiet) -> None:
    """``medsi train --phantoms N``: the MRI bundle (see medsi.pipeline.default_bundle)."""
    from medsi.errors import ConfigError
    from medsi.pipeline.default_bundle import DEFAULT_RECIPE, build_mri_bundle

    if output.exists() and not overwrite:
        raise ConfigError(
            f'"--output" must not exist, got {str(output)!r}, which does; choose another path '
            "or pass --overwrite."
        )
    recipe = _read_config(config_path) if config_path is not None else DEFAULT_RECIPE
    bundle = build_mri_bundle(
        output,
        n_subjects=phantoms,
        heldout_subjects=max(2, phantoms // 4),
        recipe=recipe,
        epochs=epochs,
        seed=0 if seed is None else seed,
        progress=not quiet,
        log=(lambda _: None) if quiet else click.echo,
    )
    if quiet:
        click.echo(str(output))
        return
    click.echo(f"Bundle written to {output} (content hash {bundle.content_hash[:12]})")
    click.echo(f"Next: medsi run SCAN --model {output}")
