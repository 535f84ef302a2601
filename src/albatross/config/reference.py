"""Prints the configuration reference: `python -m albatross.config.reference`.

Regenerate the committed copy with
`PYTHONPATH=src python -m albatross.config.reference > docs/configuration.md`.
"""

from albatross.config.document import render_reference

__all__ = ["render_reference"]

if __name__ == "__main__":
    print(render_reference(), end="")
