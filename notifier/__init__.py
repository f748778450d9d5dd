"""notifier: an asynchronous notification and push service (urgent DINGs, daily lessons)."""

__version__ = "0.1.0"
