"""Nightly rebuilds: build every recipe, compare with the last green night, publish only green.

``edgekiln nightly`` (or ``python -m pipeline.nightly``) builds the selected recipes through the
normal planner, executor and cache, one after the other, each in a process of its own; one
recipe's failure does not stop the next. Each bundle (a recipe x target, or x publishing stage)
is one *case*:

    build ──> metrics ──> time again ──> compare with the last green ──> publish
                                          case (history.sqlite)        if green
    then, for the night: report.html, report.json, junit.xml

The engine names no stage kind, so a case's metrics are read by their names from the summaries
of the stages its bundle depends on (``top1_agreement``, ``latency_ms``, ``size_bytes``... as a
validating kind reports them; later stages win, as in ``pipeline.verdicts``). Those are the
summaries the bundle's manifest.json lists under ``stages``; they come from the executor's
results, so a bundle that is held back has them too.
"""
