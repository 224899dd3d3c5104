# Exercise 08-ranges: RFC 9110 section 14.1.2, the bytes a Range field asks for.
import re

SPEC = re.compile(r"(\d*)-(\d*)", re.ASCII)


def byte_ranges(value, length):
    """The satisfiable (first, last) ranges of `value` on a body of `length` bytes, in order."""
    unit, equals, specs = value.strip(" \t").partition("=")
    if not equals or unit.lower() != "bytes":
        return None  # another unit, or no unit at all: ignore the field
    parsed = []
    for item in specs.split(","):
        item = item.strip(" \t")
        if not item:
            continue  # empty list elements are allowed
        found = SPEC.fullmatch(item)
        if found is None or not (found[1] or found[2]):
            return None  # one invalid range-spec makes the whole field invalid
        first = int(found[1]) if found[1] else None
        last = int(found[2]) if found[2] else None
        if first is not None and last is not None and last < first:
            return None
        parsed.append((first, last))
    if not parsed:
        return None
    ranges = []
    for first, last in parsed:
        if first is None:  # -N: the last N bytes
            if last and length:
                ranges.append((max(0, length - last), length - 1))
        elif first < length:  # first- or first-last, clipped to the end
            ranges.append((first, length - 1 if last is None else min(last, length - 1)))
    return ranges
