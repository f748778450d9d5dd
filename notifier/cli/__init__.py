"""The bodies of the CLI's commands, one module each (notifier/__main__.py holds only the parser)."""
