"""``python -m crashbroker`` runs the CLI (as the ``crashbroker`` script does)."""

from crashbroker.entry import crashbroker

raise SystemExit(crashbroker())
