"""The ``monai-xres`` command: ``commands`` (what each subcommand does), ``parser`` (its arguments, read
from the method registry), ``output`` (what it prints)."""

from monai_xres.cli.commands import CliError, main

__all__ = ["CliError", "main"]
