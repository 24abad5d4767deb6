"""``python -m flows.cli``: the ``cmsr`` command."""

from flows.cli import main

main()
