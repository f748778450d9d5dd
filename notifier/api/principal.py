"""The authenticated caller."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from notifier.api.problems import forbidden


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str | None  # None: the bootstrap admin token
    role: str
    unit_id: str | None = None
    member_id: str | None = None
    expires_at: datetime | None = None  # keys this one issues expire no later
    session_owner: str | None = None  # a console session without a key: whose idempotency keys

    @property
    def owner(self) -> str:
        """Scope for idempotency keys."""
        return self.key_id or self.session_owner or "admin"

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def scope_root(self) -> str | None:
        """The unit whose subtree bounds this principal (None: no bound, i.e. admin)."""
        return self.unit_id if self.role in ("service", "secretary") else None

    def require(self, *roles: str) -> None:
        if self.role not in roles:
            raise forbidden(f"a {self.role} key may not do this")
