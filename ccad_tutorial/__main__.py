"""``python -m ccad_tutorial`` does what the ``ccad-tutorial`` console script does."""

from ccad_tutorial.cli import main

raise SystemExit(main())
