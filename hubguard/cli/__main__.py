"""`python -m hubguard.cli ...` runs the command line (the git hooks call it this way)."""

from hubguard.cli.main import main

main()
