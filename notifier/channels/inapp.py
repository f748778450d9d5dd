"""In-app inbox: the delivery row *is* the inbox entry, so it is delivered when it is created."""

from __future__ import annotations

from typing import Any

from notifier.channels.base import Capabilities, InvalidTarget, Outcome, Outgoing, Result


class InAppChannel:
    id = "inapp"
    capabilities = Capabilities(
        max_batch=10_000, needs_contact=False, delivers_on_insert=True, supports_recall=True, max_attempts=1
    )

    def validate_target(self, target: Any) -> Any:
        raise InvalidTarget("the inapp channel reaches every member's inbox and takes no contact")

    async def send(self, batch: list[Outgoing]) -> list[Result]:
        # Only reached if a row was queued by hand: the inbox entry already exists.
        return [Result(item.delivery_id, Outcome.DELIVERED) for item in batch]

    async def close(self) -> None:
        return None
