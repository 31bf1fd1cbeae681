"""`python -m orch`: the same command line as `orch`."""

from orch.cli import main

main()
