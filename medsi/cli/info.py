"""``medsi info BUNDLE``: print what a model bundle holds."""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["info"]


@click.command()
@click.argument("bundle", type=click.Path(exists=True, path_type=Path))
def info(bundle: Path) -> None:
    """Print what the model bundle BUNDLE (a folder) holds.

    Shows the content hash, the input it expects, the model, diffusion and score settings, the
    noise covariance, the reference bank, the training record and the versions it was made
    with. Loading checks every file's hash and that the model is piecewise linear.
    """
    from medsi.model.bundle import describe_bundle, load_bundle

    click.echo(describe_bundle(load_bundle(bundle)))
