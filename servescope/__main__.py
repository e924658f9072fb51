"""`python -m servescope ...` runs the servescope command line (for machines without the console script)."""

from servescope.cli import main

main()
