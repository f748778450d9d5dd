"""Escalation policies: ordered steps, each "after" a delay, that remind the unread on stronger
channels or notify roles (secretaries, the on-duty officer); repeated N rounds.

Pure rules: parsing ISO 8601 durations, validating a policy, and the timetable of a snapshot.
A round lasts as long as its last step's delay; round r, step i is due at
``start + r * cycle + steps[i].after``. Deliveries made by a step carry
``step_code(r, i) = r * 100 + i + 1`` (0 is the first send), so each (round, step) sends at most
once per member and channel.

Keys that are not an admin's may not space steps closer than a minimum interval
(``crowded_steps``; the setting ``escalation_min_step_seconds``), so a policy cannot ring one
officer every second.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    WithJsonSchema,
    model_serializer,
    model_validator,
)

MAX_STEPS = 10
MAX_ROUNDS = 20
MIN_CYCLE_SECONDS = 1.0

_DURATION = re.compile(r"^P(?:(?P<d>\d+)D)?(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$")


def parse_duration(value: object) -> float:
    """ISO 8601 duration (``PT5M``, ``PT30S``, ``P1DT2H``) or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration such as PT5M")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION.match(value.strip())
        if not match or value.strip() in ("P", "PT") or value.strip().endswith("T"):
            raise ValueError("an ISO 8601 duration such as PT5M or PT30S")
        parts = {k: float(v) if v else 0.0 for k, v in match.groupdict().items()}
        seconds = parts["d"] * 86400 + parts["h"] * 3600 + parts["m"] * 60 + parts["s"]
    else:
        raise ValueError("a duration such as PT5M")
    if not 0 <= seconds <= 30 * 86400:
        raise ValueError("between 0 seconds and 30 days")
    return seconds


def format_duration(seconds: float) -> str:
    whole = int(seconds)
    h, rem = divmod(whole, 3600)
    m, s = divmod(rem, 60)
    frac = seconds - whole
    out = "PT" + (f"{h}H" if h else "") + (f"{m}M" if m else "")
    if s or frac or out == "PT":
        out += f"{s + frac:g}S"
    return out


Seconds = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema({"anyOf": [{"type": "string", "examples": ["PT5M", "PT30S"]}, {"type": "number"}]}),
]
Role = Literal["secretary", "on_duty"]
Mode = Literal["app", "sms", "phone"]
# Channels that take a step's ``mode`` (how strongly to remind), with the modes they know.
MODE_CHANNELS: dict[str, tuple[str, ...]] = {"dingtalk_ding": ("app", "sms", "phone")}


class Step(BaseModel):
    model_config = ConfigDict(extra="forbid")

    after: Seconds = Field(description="ISO 8601 duration after the notice went out, e.g. PT5M")
    remind: list[str] = Field(
        default_factory=list, max_length=8, description="channels to remind the unread on"
    )
    notify: list[Role] = Field(default_factory=list, max_length=2, description="roles told about the unread")
    channels: list[str] = Field(
        default_factory=list, max_length=8, description="channels for the notify summary"
    )
    mode: Mode | None = Field(
        default=None,
        description="how the reminder reaches them on a channel that offers a choice: a dingtalk_ding "
        "DING by app (default), sms or phone call",
    )

    @model_serializer(mode="wrap")
    def _without_default_mode(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # A step without a mode is stored and shown as it was before modes existed.
        data: dict[str, Any] = handler(self)
        if data.get("mode") is None:
            data.pop("mode", None)
        return data

    @model_validator(mode="after")
    def _has_action(self) -> Step:
        if not self.remind and not self.notify:
            raise ValueError("a step must remind the unread or notify someone")
        if self.mode is not None and not any(c in MODE_CHANNELS for c in self.remind):
            raise ValueError(f"a mode applies to reminders on {', '.join(MODE_CHANNELS)} only")
        if self.notify and not self.channels:
            raise ValueError("a notify step needs channels for the summary")
        if len(set(self.remind)) != len(self.remind) or len(set(self.notify)) != len(self.notify):
            raise ValueError("channels and roles must not repeat")
        return self


class PolicyRules(BaseModel):
    model_config = ConfigDict(extra="forbid")

    steps: list[Step] = Field(min_length=1, max_length=MAX_STEPS)
    repeat: int = Field(default=0, ge=0, le=MAX_ROUNDS, description="extra rounds after the first")

    @model_validator(mode="after")
    def _ordered(self) -> PolicyRules:
        afters = [s.after for s in self.steps]
        if afters != sorted(afters):
            raise ValueError("steps must be in order of their 'after' delay")
        if self.repeat and afters[-1] < MIN_CYCLE_SECONDS:
            raise ValueError("a repeating policy needs a last step after at least 1 second")
        return self

    def channels(self) -> set[str]:
        return {c for s in self.steps for c in (*s.remind, *s.channels)}

    def snapshot(self, name: str | None) -> dict[str, object]:
        """What a notice keeps: later edits of the policy do not change running notices."""
        return {"policy": name, **self.model_dump(mode="json")}


def step_code(round_: int, index: int) -> int:
    return round_ * 100 + index + 1


def step_modes(snapshot: dict[str, Any] | None) -> tuple[str | None, ...]:
    """The ``mode`` of each step of a notice's policy snapshot, by step index (pure)."""
    steps = snapshot.get("steps") if isinstance(snapshot, dict) else None
    if not isinstance(steps, list):
        return ()
    return tuple(s.get("mode") if isinstance(s, dict) else None for s in steps)


def mode_of_step(modes: tuple[str | None, ...], step: int) -> str | None:
    """The mode a delivery made by ``step`` is sent with (None: the first send, a remind-now
    press, or a step without one)."""
    if step <= 0 or is_manual_step(step):
        return None
    index = (step - 1) % 100
    return modes[index] if index < len(modes) else None


def cycle_seconds(rules: PolicyRules) -> float:
    return max(rules.steps[-1].after, MIN_CYCLE_SECONDS)


def due_offset(rules: PolicyRules, round_: int, index: int) -> float:
    """Seconds after the start at which (round, step) is due."""
    return round_ * cycle_seconds(rules) + rules.steps[index].after


def next_position(rules: PolicyRules, round_: int, index: int) -> tuple[int, int] | None:
    """The step after (round, index), or None when the policy is exhausted."""
    if index + 1 < len(rules.steps):
        return round_, index + 1
    if round_ < rules.repeat:
        return round_ + 1, 0
    return None


def crowded_steps(rules: PolicyRules, min_interval: float) -> list[int]:
    """Indexes of the steps that come less than ``min_interval`` seconds after the one before.

    The first step counts from the send, and -- since a round lasts until its last step -- a
    new round's first step comes ``steps[0].after`` after the last one: one rule covers both."""
    crowded: list[int] = []
    previous = 0.0
    for i, step in enumerate(rules.steps):
        if step.after - previous < min_interval:
            crowded.append(i)
        previous = step.after
    return crowded


# A secretary's remind-now (POST /v1/notices/{id}/remind) sends as steps from here up, one per
# press, far above any policy step (at most MAX_ROUNDS * 100 + MAX_STEPS): a press never shares a
# step with the policy, so neither can stop the other's sends as duplicates.
MANUAL_STEP_BASE = 1_000_000


def is_manual_step(step: int) -> bool:
    return step >= MANUAL_STEP_BASE
