"""One module per ``sdedge`` subcommand: ``add_parser(subparsers)`` and ``run(args) -> int``."""
