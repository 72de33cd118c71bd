"""``python -m rg_tracer.cli``: the ``rg-tracer`` command (for launchers that run a module)."""

from rg_tracer.cli import main

main()
