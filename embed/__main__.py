"""`python -m cellembed` runs the command-line tool."""

from cellembed.cli import main

main()
