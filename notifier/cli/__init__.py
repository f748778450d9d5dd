"""Bodies of the ``notifier`` subcommands (``notifier/__main__.py`` holds only the parser)."""
