"""Entry point of the ``medsi`` command and its subcommands."""

from __future__ import annotations

import sys

import click

from medsi import __version__
from medsi.cli.batch import batch
from medsi.cli.experiment import experiment
from medsi.cli.info import info
from medsi.cli.pacs import send, serve
from medsi.cli.run import demo, run
from medsi.cli.train import train
from medsi.errors import MedsiError


class _MedsiGroup(click.Group):
    """Turn medsi's own errors into a one-line message and exit code 1 (traceback with --debug)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MedsiError as e:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"Error: {e}", err=True)
            sys.exit(1)


@click.group(cls=_MedsiGroup)
@click.version_option(__version__, prog_name="medsi")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """medsi: anomalies in brain MRI found by a diffusion model, each with a valid p-value."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


@main.command()
@click.option("--quick", is_flag=True, help="A short run (about a minute) of each check.")
@click.option("--seed", default=0, show_default=True, help="Seed of the random models and images.")
def selftest(quick: bool, seed: int) -> None:
    """Check on this machine that the p-values medsi computes are valid.

    Runs the engine's core checks (truncated normal against 50-digit arithmetic, exact
    intervals, bounds that contain the exhaustive p, and uniform null p-values), prints
    a table and exits with status 1 if any check fails.
    """
    from medsi.selftest import format_table, run_selftest

    results = run_selftest(quick=quick, seed=seed, progress=True)
    click.echo(format_table(results))
    failed = [r for r in results if not r.passed]
    if failed:
        click.echo(f"{len(failed)} check(s) FAILED: " + ", ".join(r.name for r in failed), err=True)
        sys.exit(1)
    click.echo("All checks passed.")


main.add_command(train)
main.add_command(info)
main.add_command(experiment)
main.add_command(run)
main.add_command(demo)
main.add_command(batch)
main.add_command(send)
main.add_command(serve)
