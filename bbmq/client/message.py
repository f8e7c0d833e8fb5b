"""The message a consumer is handed."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Message:
    """A delivered message: ack it, or nack it to have it redelivered."""

    id: int
    body: bytes
    attempt: int
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    @property
    def sender(self) -> str | None:
        return self.meta.get("from")
