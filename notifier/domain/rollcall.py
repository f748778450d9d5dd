"""Why a recipient has not read a notice, from what its deliveries and the escalation did.

Pure rules over the rows db/rollcall.py returns: per channel the best delivery stands; the
recipient's reason is the best of those (delivered > sent > on its way > failed > no contact >
cancelled, as the recipient status ranks them), and the escalation so far is every reminder
delivery (step > 0) and every step that told a secretary or the officer on duty, or could not
reach this member, in time order.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from notifier.domain.escalation import is_manual_step

Reason = Literal[
    "delivered",
    "sent",
    "sending",
    "queued",
    "held",
    "throttled",
    "retrying",
    "circuit_open",
    "budget_exhausted",
    "failed",
    "no_contact",
    "cancelled",
]
WAITS: dict[str, Reason] = {
    "quiet_hours": "held",
    "throttled": "throttled",
    "capped": "throttled",
    "retry": "retrying",
    "circuit_open": "circuit_open",
    "budget_exhausted": "budget_exhausted",
}
RANK = {"delivered": 5, "sent": 4, "unknown": 4, "queued": 3, "sending": 3, "failed": 2, "cancelled": 1}
CALL_CHANNELS = frozenset({"voice"})


class ChannelState(BaseModel):
    channel: str
    state: Reason = Field(description="where this channel's best delivery stands")
    at: datetime | None = Field(default=None, description="when it was delivered, sent or given up")
    until: datetime | None = Field(default=None, description="held or waiting: when it is tried next")
    error: str | None = None
    attempts: int


class EscalationEntry(BaseModel):
    at: datetime
    action: Literal["reminded", "called", "secretary_told", "on_duty_told", "not_reached"]
    manual: bool = Field(default=False, description="a secretary's remind-now, not the policy")
    channel: str | None = None
    step: int | None = None
    state: str | None = Field(default=None, description="where a reminder delivery stands")


class Why(BaseModel):
    reason: Reason
    channel: str | None = Field(default=None, description="the channel the reason is about")
    at: datetime | None = None
    until: datetime | None = None
    error: str | None = None
    no_contact: list[str] = Field(default_factory=list, description="channels without a working contact")
    channels: list[ChannelState]
    escalation: list[EscalationEntry]


def _ts(value: Any) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def channel_state(d: dict[str, Any]) -> ChannelState:
    state: Reason
    at = until = None
    if d["state"] == "delivered":
        state, at = "delivered", _ts(d["updated_at"])
    elif d["state"] in ("sent", "unknown"):
        state, at = "sent", _ts(d["sent_at"]) or _ts(d["updated_at"])
    elif d["state"] == "sending":
        state = "sending"
    elif d["state"] == "queued":
        state, until = WAITS.get(d["wait_reason"] or "", "queued"), _ts(d["next_attempt_at"])
    elif d["state"] == "failed":
        state, at = ("no_contact" if d["no_contact"] else "failed"), _ts(d["updated_at"])
    else:
        state, at = "cancelled", _ts(d["updated_at"])
    return ChannelState(
        channel=d["channel"], state=state, at=at, until=until, error=d["error"], attempts=d["attempts"]
    )


def why(
    channels: list[dict[str, Any]],
    delivered_at: datetime | None,
    reminders: list[dict[str, Any]],
    events: list[dict[str, Any]],
    member_id: str,
) -> Why:
    """``channels``: the best delivery per channel; ``reminders``: deliveries with step > 0;
    ``events``: the notice's escalation events (db/rollcall.ESCALATION_EVENTS)."""
    states = [channel_state(d) for d in channels]
    no_contact = sorted(s.channel for s in states if s.state == "no_contact")
    escalation = _escalation(reminders, events, member_id)
    if not channels:
        return Why(reason="no_contact", channels=[], escalation=escalation)
    best_row = max(channels, key=lambda d: (RANK.get(d["state"], 0), d["updated_at"]))
    best = states[channels.index(best_row)]
    if best.state == "no_contact" and any(s.state == "failed" for s in states):
        best = next(s for s in states if s.state == "failed")  # a real error says more than a gap
    at = delivered_at if best.state == "delivered" and delivered_at is not None else best.at
    return Why(
        reason=best.state,
        channel=best.channel,
        at=at,
        until=best.until,
        error=best.error,
        no_contact=no_contact,
        channels=states,
        escalation=escalation,
    )


def _escalation(
    reminders: list[dict[str, Any]], events: list[dict[str, Any]], member_id: str
) -> list[EscalationEntry]:
    out = [
        EscalationEntry(
            at=datetime.fromisoformat(r["at"]),
            action="called" if r["channel"] in CALL_CHANNELS else "reminded",
            manual=is_manual_step(r["step"]),
            channel=r["channel"],
            step=r["step"],
            state=channel_state(r).state,
        )
        for r in reminders
    ]
    for e in events:
        detail = e["detail"]
        if e["kind"] == "not_reached":
            if member_id in (e["members"] or []):
                out.append(
                    EscalationEntry(
                        at=e["at"],
                        action="not_reached",
                        channel=detail.get("channel"),
                        step=detail.get("step"),
                        manual=is_manual_step(detail.get("step") or 0),
                    )
                )
            continue
        notified = detail.get("notified") or {}
        if not notified.get("summary"):
            continue  # skipped (acknowledged), nobody to tell, or over the ceiling: nobody was told
        for role, action in (("secretary", "secretary_told"), ("on_duty", "on_duty_told")):
            if role in notified:
                out.append(EscalationEntry(at=e["at"], action=action))
    out.sort(key=lambda x: x.at)
    return out
