"""Retry policy: exponential backoff with full jitter, honouring a provider's Retry-After."""

from __future__ import annotations

import random


def backoff_seconds(
    attempt: int,
    *,
    base: float,
    cap: float,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Delay before attempt ``attempt + 1`` (``attempt`` counts from 1).

    Full jitter in [base*2^(n-1)/2, base*2^(n-1)], never below what the provider asked for
    unless it asked for more than ``cap`` (a ``Retry-After: 1e300`` waits ``cap``, then asks again).
    """
    ceiling = min(cap, base * (2 ** max(0, attempt - 1)))
    r = (rng or random).uniform(ceiling / 2, ceiling)
    if retry_after is not None:
        r = max(r, min(retry_after, cap))
    return r
