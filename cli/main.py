"""The `crossmodal` command: a thin click app over the library (parse, load config, call)."""
from __future__ import annotations

import importlib
import importlib.util
import sys

import click

from crossmodal import __version__

# name -> "module:attribute"; loaded on first use so `crossmodal --help` stays fast.
COMMANDS = {
    "prepare": "cli.prepare:prepare",
    "inspect": "cli.inspect_cmd:inspect",
    "teach": "cli.teach:teach",
    "distill": "cli.distill:distill",
    "probe": "cli.probe:probe",
    "quickstart": "cli.quickstart:quickstart",
}


class App(click.Group):
    """A group that loads subcommands lazily and turns user errors into one line and exit code 2."""

    def list_commands(self, ctx):
        return [n for n, target in COMMANDS.items() if importlib.util.find_spec(target.split(":")[0])]

    def get_command(self, ctx, name):
        target = COMMANDS.get(name)
        if target is None or not importlib.util.find_spec(target.split(":")[0]):
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)

    def invoke(self, ctx):
        from crossmodal.errors import CrossmodalError

        try:
            return super().invoke(ctx)
        except CrossmodalError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=App, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="crossmodal")
def app():
    """Contrastive Representation Distillation (CRD) for compression, cross-modal transfer and ensembles.

    Pipeline: prepare (raw data -> HDF5) -> teach (teacher) -> distill (student) -> probe (evaluate).
    """


if __name__ == "__main__":
    app()
