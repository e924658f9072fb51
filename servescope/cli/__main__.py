"""`python -m servescope.cli ...`: the same command line as `python -m servescope`."""

from servescope.cli import main

main()
