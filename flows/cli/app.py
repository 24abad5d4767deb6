"""The ``typer`` application every command module registers itself on."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="cmsr", no_args_is_help=True, add_completion=False, rich_markup_mode="rich",
    # a traceback is shown by ``--verbose`` (``exit_codes``), never typer's own with local variables
    pretty_exceptions_enable=False,
    help="Guided super-resolution of thermal/NIR orthomosaics with CMSR (single-pair cross-modality SR).",
    context_settings={"help_option_names": ["-h", "--help"]},
)
