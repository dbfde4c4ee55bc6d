"""Stage kind ``package``: fit a model to a target and lay out its deployable files."""
