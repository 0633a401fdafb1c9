"""Credits are integers, never floats.

Redis runs the append script in Lua 5.1, whose numbers are IEEE doubles: they
hold every integer exactly only up to 2**53 - 1. Every amount and every running
total is therefore bounded by ``MAX_CREDITS`` (about 9 quadrillion credits), a
stricter bound than int64, so Python and the script always agree to the unit.
"""

from __future__ import annotations

from .errors import ValidationError

MAX_CREDITS = 2**53 - 1


def check_amount(value: object, field: str = "amount") -> int:
    """A strictly positive whole number of credits."""
    n = check_credits(value, field)
    if n <= 0:
        raise ValidationError(field, f"{field} must be a positive integer, got {n}")
    return n


def check_delta(value: object, field: str = "delta") -> int:
    """A non-zero signed whole number of credits."""
    n = check_credits(value, field)
    if n == 0:
        raise ValidationError(field, f"{field} must not be zero")
    return n


def check_credits(value: object, field: str) -> int:
    # bool is an int subclass: True must not become one credit.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(field, f"{field} must be an integer number of credits")
    if not -MAX_CREDITS <= value <= MAX_CREDITS:
        raise ValidationError(field, f"{field} is out of range (|{field}| <= {MAX_CREDITS})")
    return value
