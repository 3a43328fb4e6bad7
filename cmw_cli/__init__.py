"""The `cmw` command line: thin Typer commands over agent/'s public functions."""
