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
    """A group that loads subcommands lazily and runs them inside the error boundary (cli/boundary.py)."""

    def list_commands(self, ctx):
        return [n for n, target in COMMANDS.items() if importlib.util.find_spec(target.split(":")[0])]

    def get_command(self, ctx, name):
        target = COMMANDS.get(name)
        if target is None or not importlib.util.find_spec(target.split(":")[0]):
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        """Run the command inside the error boundary (cli/boundary.py); exit with its status."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        from cli.boundary import run_guarded

        sys.exit(run_guarded(lambda: super(App, self).main(args, prog_name, complete_var, standalone_mode=False,
                                                           **extra)))


@click.group(cls=App, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="crossmodal")
def app():
    """Contrastive Representation Distillation (CRD) for compression, cross-modal transfer and ensembles.

    Pipeline: prepare (raw data -> HDF5) -> teach (teacher) -> distill (student) -> probe (evaluate).
    """


if __name__ == "__main__":
    app()
