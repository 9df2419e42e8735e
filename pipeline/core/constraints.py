"""Constraints a settings dataclass states on its fields, checked when a config is loaded.

A field states them as `typing.Annotated` markers; `settings_loader` applies them after the
value has the right type, and calls a dataclass's `validate()` (rules between fields) once
it is built. Nothing here runs when code builds a settings object itself.

    @dataclass
    class ShardSettings:
        samples_per_shard: Annotated[int, AtLeast(1)] = 10_000
        keys: Annotated[list[str], NonEmpty()] = ...
        allow_networks: list[Annotated[str, Cidr()]] = ...

    def validate(self):   # optional; raise Invalid(key, problem) for a rule between fields
        if self.min_chars > self.max_chars:
            raise Invalid("min_chars", f"must be at most max_chars ({self.max_chars})", self.min_chars)

A violation is one line: `<file>: <dotted.key>: must be at least 1, got -5`.
"""
from __future__ import annotations

import ipaddress
import math
import re
from typing import Any, Optional


class Constraint:
    """A marker in `Annotated[type, marker]`: `problem(value)` says what is allowed, or None."""

    def problem(self, value: Any) -> Optional[str]:
        raise NotImplementedError


class Range(Constraint):
    """low <= value <= high; either end may be open (excluded) or absent. NaN is refused."""

    def __init__(self, low: Optional[float] = None, high: Optional[float] = None, *,
                 low_open: bool = False, high_open: bool = False):
        self.low, self.high, self.low_open, self.high_open = low, high, low_open, high_open

    def problem(self, value: Any) -> Optional[str]:
        value = float(value)
        fits = not math.isnan(value)
        if self.low is not None:
            fits = fits and (value > self.low if self.low_open else value >= self.low)
        if self.high is not None:
            fits = fits and (value < self.high if self.high_open else value <= self.high)
        return None if fits else f"must be {self.allowed()}"

    def allowed(self) -> str:
        low, high = self.low, self.high
        if low is not None and high is not None:
            if not self.low_open and not self.high_open:
                return f"between {low} and {high}"
            return f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"
        if low is not None:
            return f"greater than {low}" if self.low_open else f"at least {low}"
        return f"less than {high}" if self.high_open else f"at most {high}"

    def __repr__(self) -> str:
        return f"Range({self.allowed()})"


class AtLeast(Range):
    """value >= low"""

    def __init__(self, low: float):
        super().__init__(low=low)


class Above(Range):
    """value > low"""

    def __init__(self, low: float):
        super().__init__(low=low, low_open=True)


class Between(Range):
    """low <= value <= high (pass high_open=True for value < high)"""

    def __init__(self, low: float, high: float, *, low_open: bool = False, high_open: bool = False):
        super().__init__(low, high, low_open=low_open, high_open=high_open)


class Finite(Constraint):
    """A number that is neither infinite nor NaN."""

    def problem(self, value: Any) -> Optional[str]:
        return None if math.isfinite(float(value)) else "must be a finite number"

    def __repr__(self) -> str:
        return "Finite()"


class NonEmpty(Constraint):
    """A list (or string) with at least one item."""

    def problem(self, value: Any) -> Optional[str]:
        return None if len(value) else "must not be empty"

    def __repr__(self) -> str:
        return "NonEmpty()"


class Cidr(Constraint):
    """A network such as 10.0.0.0/8 or fd00::/8 (host bits may be set: 10.1.2.3/8)."""

    def problem(self, value: Any) -> Optional[str]:
        try:
            ipaddress.ip_network(str(value), strict=False)
        except ValueError:
            return "must be a network in CIDR form, e.g. 10.0.0.0/8 or fd00::/8"
        return None

    def __repr__(self) -> str:
        return "Cidr()"


class Matches(Constraint):
    """A string matching `pattern` in full; `allowed` says it in words."""

    def __init__(self, pattern: str, allowed: str):
        self.pattern, self.allowed = re.compile(pattern), allowed

    def problem(self, value: Any) -> Optional[str]:
        return None if self.pattern.fullmatch(str(value)) else f"must be {self.allowed}"

    def __repr__(self) -> str:
        return f"Matches({self.pattern.pattern!r})"


class Invalid(Exception):
    """Raised by a settings dataclass's `validate()`: `key` (relative to the dataclass) breaks
    a rule between fields; the loader adds the file and the section."""

    def __init__(self, key: str, problem: str, value: Any):
        super().__init__(f"{key}: {problem}, got {value!r}")
        self.key, self.problem, self.value = key, problem, value


__all__ = ["Constraint", "Range", "AtLeast", "Above", "Between", "Finite", "NonEmpty", "Cidr", "Matches", "Invalid"]
