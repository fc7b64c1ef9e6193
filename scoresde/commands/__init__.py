"""Sub-commands of the ``scoresde`` CLI: one module each, exposing ``add_parser(subparsers)``."""
