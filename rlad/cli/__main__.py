"""`python -m rlad.cli`: the same command line as `rlad`."""

from rlad.cli import main

main()
