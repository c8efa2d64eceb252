"""Every closed set of values the library accepts, each defined once as a ``str`` Enum.

The CLI uses these classes as its option types, so ``--status``, ``--sort`` and
``--on-conflict`` accept exactly what the library accepts, and refuse the rest
the way every bad option value is refused. Library functions take a member or its
plain string (the bot's code passes strings) and convert through the Enum.

Cheap to import (the standard library and sessionctl.errors): the CLI imports it at
start-up to declare its options.
"""

from __future__ import annotations

from enum import Enum
from typing import TypeVar

from sessionctl.errors import UnknownChoiceError

_C = TypeVar("_C", bound="Choice")


class Choice(str, Enum):
    """A member is its value: it prints, formats, compares and hashes as that string."""

    def __str__(self) -> str:
        return self.value

    @classmethod
    def values(cls) -> tuple[str, ...]:
        return tuple(member.value for member in cls)

    @classmethod
    def lookup(cls: type[_C], value: object) -> _C | None:
        """The member for ``value`` (a member or its exact string), or None when there is none."""
        try:
            return cls(value)
        except (ValueError, TypeError):
            return None

    @classmethod
    def parse(cls: type[_C], value: object, name: str) -> _C:
        """The member for ``value``; UnknownChoiceError naming the parameter ``name`` when there is none."""
        member = cls.lookup(value)
        if member is None:
            raise UnknownChoiceError(name, value, cls.values())
        return member


class SessionStatus(Choice):
    """The five statuses the table's CHECK constraint accepts, in flow order."""

    GATHERING = "gathering"
    RECOMMENDING = "recommending"
    SELECTING = "selecting"
    ORDERING = "ordering"
    COMPLETED = "completed"


class SortKey(Choice):
    """What ``sessions list`` sorts by (each key's column is in ``repository.SORT_COLUMNS``)."""

    EXPIRES = "expires"
    USER = "user"
    UPDATED = "updated"
    CREATED = "created"


class SessionState(Choice):
    """Which sessions a listing or an export takes: live ones, expired ones, or both."""

    ACTIVE = "active"
    EXPIRED = "expired"
    ALL = "all"


class ConflictPolicy(Choice):
    """What an import does with a row whose user_id is already stored."""

    SKIP = "skip"  # keep the stored row
    REPLACE = "replace"  # take the imported row
    NEWER = "newer"  # keep whichever has the larger updated_at (the stored one on a tie)


class FieldCase(Choice):
    """How an old KV session value spells its fields: ``collectedInfo`` (the TypeScript bot's) or ``collected_info``."""

    CAMEL = "camel"
    SNAKE = "snake"
