"""`python -m vitexport.cli`: the `vitexport` command."""

from vitexport.cli import main

main()
