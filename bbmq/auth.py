"""Token authentication: who may publish, subscribe or administer, on which topics.

Tokens are configured as one string (``--auth-tokens`` / ``BBMQ_AUTH_TOKENS``)::

    TOKEN:PERMISSIONS:PATTERNS[,TOKEN:PERMISSIONS:PATTERNS ...]

PERMISSIONS is ``publish``, ``subscribe`` and/or ``admin`` joined by ``+``;
PATTERNS are shell-style globs on topic names joined by ``|``.  Example:
``s3cret:publish+subscribe:orders.*|billing,ops-key:admin:*``.  Clients send
their token in the handshake's JSON body; tokens are compared in constant time.
With no tokens configured the broker is open.
"""

from __future__ import annotations

import fnmatch
import hmac
from dataclasses import dataclass
from enum import StrEnum


class Permission(StrEnum):
    PUBLISH = "publish"
    SUBSCRIBE = "subscribe"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class TokenRule:
    token: bytes
    permissions: frozenset[Permission]
    patterns: tuple[str, ...]


class Authorizer:
    """Decides whether a handshake's token allows a role on a topic."""

    def __init__(self, rules: list[TokenRule]) -> None:
        self.rules = rules

    @property
    def enabled(self) -> bool:
        return bool(self.rules)

    @classmethod
    def parse(cls, text: str) -> Authorizer:
        """Read the ``--auth-tokens`` syntax (see the module docstring); ValueError if wrong."""
        rules = []
        for entry in filter(None, (part.strip() for part in text.split(","))):
            token, sep1, rest = entry.partition(":")
            perms, sep2, patterns = rest.partition(":")
            if not (token and sep1 and sep2 and perms and patterns):
                raise ValueError(f"auth token entry {entry.split(':')[0][:4]}... must be "
                                 "TOKEN:PERMISSIONS:PATTERNS, e.g. s3cret:publish+subscribe:*")
            try:
                permissions = frozenset(Permission(perm) for perm in perms.split("+"))
            except ValueError:
                raise ValueError(f"unknown permission in {perms!r}: use publish, subscribe, "
                                 "admin joined by '+'") from None
            rules.append(TokenRule(token.encode(), permissions, tuple(patterns.split("|"))))
        return cls(rules)

    def admin_token(self) -> str | None:
        """A configured token with the admin permission (for ``bbmq server status``)."""
        for rule in self.rules:
            if Permission.ADMIN in rule.permissions:
                return rule.token.decode()
        return None

    def allows(self, token: object, permission: Permission, topic: str | None) -> bool:
        """True if ``token`` grants ``permission`` (on ``topic``, unless admin)."""
        if not self.rules:
            return True
        presented = str(token).encode() if token is not None else b""
        allowed = False
        for rule in self.rules:  # no early exit: the time taken does not depend on the match
            match = hmac.compare_digest(presented, rule.token)
            if match and permission in rule.permissions and (
                    topic is None or any(fnmatch.fnmatchcase(topic, pattern)
                                         for pattern in rule.patterns)):
                allowed = True
        return allowed
