"""``python -m pipeline`` and the ``edgekiln`` script: the no-op check first, then the CLI."""

import sys


def main() -> None:
    # before Hydra is even imported: a rebuild with nothing to do ends here
    from pipeline.noop.fastpath import exit_if_unchanged

    exit_if_unchanged(sys.argv[1:])
    from pipeline.cli import main as full

    full()


if __name__ == "__main__":
    main()
