"""Pure rules with no I/O: retry backoff, recipient status, audience limits."""
