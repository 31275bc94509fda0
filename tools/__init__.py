"""Tools of a checkout of the repository, beside the installed package (``tools/README.md`` lists them)."""
