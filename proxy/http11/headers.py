"""Header fields as an ordered, case-insensitive multi-map.

Theory of operation: HTTP keeps field order and allows a name to repeat (``Set-Cookie``,
``Via``), and field names are case-insensitive (RFC 9110 section 5.1). A ``dict`` loses both
properties, so a head is kept as a list of ``(name, value)`` pairs exactly as received; look-ups
compare lower-cased names. Values are ``str`` decoded as latin-1, which maps every byte to one
character, so ``to_bytes`` gives back the very bytes that were parsed.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator

_NO_TOKENS: frozenset[str] = frozenset()


class Headers:
    """An ordered list of header fields with case-insensitive look-up by name."""

    # _names holds the lower-cased names beside _fields, so a look-up lower-cases only the
    # name asked for, not every field of the head, every time.
    __slots__ = ("_fields", "_names")

    def __init__(self, fields: Iterable[tuple[str, str]] = ()) -> None:
        self._fields: list[tuple[str, str]] = list(fields)
        self._names: list[str] = [name.lower() for name, _ in self._fields]

    @classmethod
    def parsed(cls, fields: list[tuple[str, str]], lower_names: list[str]) -> Headers:
        """Wrap a parser's *fields* and their already lower-cased names, without copying."""
        headers = cls.__new__(cls)
        headers._fields = fields
        headers._names = lower_names
        return headers

    def get(self, name: str, default: str | None = None) -> str | None:
        """Return the value of the first field called *name*, or *default*."""
        try:
            return self._fields[self._names.index(name.lower())][1]
        except ValueError:
            return default

    def get_all(self, name: str) -> list[str]:
        """Return every value of the fields called *name*, in order."""
        wanted = name.lower()
        names = self._names
        if wanted not in names:
            return []
        if names.count(wanted) == 1:  # the usual case, found with two C-level scans
            return [self._fields[names.index(wanted)][1]]
        pairs = zip(self._fields, names, strict=True)
        return [field[1] for field, lower in pairs if lower == wanted]

    def count(self, name: str) -> int:
        """How many fields are called *name*."""
        return self._names.count(name.lower())

    def get_list(self, name: str) -> list[str]:
        """Split every field called *name* on commas (RFC 9110 section 5.6.1), dropping blanks."""
        items: list[str] = []
        for value in self.get_all(name):
            for part in value.split(","):
                part = part.strip(" \t")
                if part:
                    items.append(part)
        return items

    def tokens(self, name: str) -> frozenset[str]:
        """The lower-cased comma-separated items of the fields called *name*, as a set."""
        wanted = name.lower()
        names = self._names
        if wanted not in names:
            return _NO_TOKENS
        if names.count(wanted) == 1:
            value = self._fields[names.index(wanted)][1].lower()
            if "," not in value:  # one field, one token: the usual "Connection: keep-alive"
                value = value.strip(" \t")
                return frozenset((value,)) if value else _NO_TOKENS
        return frozenset(item.lower() for item in self.get_list(name))

    def has_token(self, name: str, token: str) -> bool:
        """Tell whether the comma-separated field *name* lists *token* (case-insensitive)."""
        return token.lower() in self.tokens(name)

    def add(self, name: str, value: str) -> None:
        """Append a field, keeping any that share its name."""
        self._fields.append((name, value))
        self._names.append(name.lower())

    def set(self, name: str, value: str) -> None:
        """Replace every field called *name* with one field holding *value*."""
        self.remove(name)
        self.add(name, value)

    def fold(self, name: str, value: str) -> None:
        """Replace every field called *name* with one holding *value*, where the first stood."""
        wanted = name.lower()
        if wanted not in self._names:
            self.add(name, value)
            return
        first = self._names.index(wanted)
        self._fields[first] = (self._fields[first][0], value)
        for index in range(len(self._names) - 1, first, -1):
            if self._names[index] == wanted:
                del self._fields[index], self._names[index]

    def remove(self, name: str) -> None:
        """Drop every field called *name*."""
        wanted = name.lower()
        if wanted not in self._names:
            return
        pairs = zip(self._fields, self._names, strict=True)
        kept = [(field, lower) for field, lower in pairs if lower != wanted]
        self._fields = [field for field, _ in kept]
        self._names = [lower for _, lower in kept]

    def copy(self) -> Headers:
        """Return an independent copy."""
        clone = Headers.__new__(Headers)
        clone._fields = list(self._fields)
        clone._names = list(self._names)
        return clone

    def without(self, lower_names: Collection[str]) -> Headers:
        """Return a copy without the fields whose lower-cased name is in *lower_names*."""
        clone = Headers.__new__(Headers)
        fields, names = self._fields.copy(), self._names.copy()
        # Copy, then delete the few dropped fields from the end backwards: cheaper than
        # rebuilding both lists, as most fields stay.
        for index in range(len(names) - 1, -1, -1):
            if names[index] in lower_names:
                del fields[index], names[index]
        clone._fields, clone._names = fields, names
        return clone

    def to_bytes(self) -> bytes:
        """Serialise as ``Name: value\\r\\n`` lines (without the blank line that ends a head)."""
        if not self._fields:
            return b""
        # Each field is a (name, value) pair of str, so ": ".join makes its line, all in C.
        return ("\r\n".join(map(": ".join, self._fields)) + "\r\n").encode("latin-1")

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._names

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Headers) and self._fields == other._fields

    def __repr__(self) -> str:
        return f"Headers({self._fields!r})"
