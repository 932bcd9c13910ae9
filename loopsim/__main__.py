"""``python -m loopsim`` runs the CLI."""

from loopsim.cli import main

main()
