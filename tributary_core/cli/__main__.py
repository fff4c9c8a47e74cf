"""``python -m tributary_core.cli``: the same as the ``tributary`` command."""

from tributary_core.cli import main

main()
