"""Fake provider servers on 127.0.0.1 that check auth exactly as the real service does and
count every message they receive."""
