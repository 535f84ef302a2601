"""Lets `python -m albatross` behave like the `albatross` command."""

from albatross.cli.main import main

raise SystemExit(main())
