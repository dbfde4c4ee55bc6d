"""The no-op fast path: decide "nothing changed" without composing the recipe.

After a successful build, ``record.save`` writes what the build depended on, keyed by the
command line: the digests of every file and folder listing in the recipe search path and in
edgekiln's own code, the installed distributions, the relevant environment, and what the build
read and produced (its sources, the factories' imports, its cache entries, its bundles). The
next identical command line checks all of that (``record.unchanged``: one stat per file, a
re-hash only where a stamp moved) and, if nothing differs, rewrites run.json and exits, having
imported only the standard library. Any difference, or any doubt, takes the full path.
"""
