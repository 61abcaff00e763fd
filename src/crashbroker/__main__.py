"""``python -m crashbroker`` runs the CLI."""

from crashbroker.cli import main

raise SystemExit(main())
