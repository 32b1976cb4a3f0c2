"""`python -m vitexport`: the `vitexport` command."""

from vitexport.cli import main

main()
