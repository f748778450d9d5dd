"""The daily lesson: at each unit's local lesson time, once per day (placeholder until built)."""

from __future__ import annotations

from notifier.workers.context import WorkerDeps


async def send_due_lessons(deps: WorkerDeps) -> int:
    """Create today's lesson notice for every unit whose local lesson time has passed; returns how many."""
    return 0
