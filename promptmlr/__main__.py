"""`python -m promptmlr` (also what `accelerate launch -m promptmlr` runs)."""

from promptmlr.cli import main

raise SystemExit(main())
