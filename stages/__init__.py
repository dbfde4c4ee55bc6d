"""edgekiln's built-in stage kinds, one subpackage each (``stages/<kind>/stage.py``).

They are registered like a team's own kinds, through the ``edgekiln.stages`` entry points in
pyproject.toml; ``common/`` holds what more than one kind uses.
"""
