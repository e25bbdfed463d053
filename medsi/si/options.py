"""Enumerated options of the selective-inference engine, coerced once from strings."""

import enum

from medsi.errors import ConfigError

__all__ = ["Alternative", "Event", "Termination", "coerce_option"]


class Alternative(enum.StrEnum):
    """Which deviation of the statistic counts as evidence against the null hypothesis."""

    TWO_SIDED = "two-sided"
    GREATER = "greater"
    LESS = "less"


class Event(enum.StrEnum):
    """The conditioning event of the selective test (DESIGN.md section 1).

    ``FULL``: the selected set is exactly the observed one on every slice the line moves.
    ``COMPONENT``: the tested region is still a union of connected components of the selected set.
    """

    FULL = "full"
    COMPONENT = "component"


class Termination(enum.StrEnum):
    """When the parametric search may stop (DESIGN.md section 2)."""

    EXHAUSTIVE = "exhaustive"
    PRECISION = "precision"
    DECISION = "decision"
    OC = "oc"  # stop after the piece holding the statistic: only the oc p-value is exact


def coerce_option(enum_type: type[enum.Enum], value, name: str):
    """Turn a string or enum member into a member of ``enum_type``.

    Parameters
    ----------
    enum_type
        The option's enum class.
    value
        A member of ``enum_type`` or its string value.
    name
        The argument's name, used in the error message.

    Returns
    -------
    enum.Enum
        The matching member.

    Raises
    ------
    ConfigError
        If ``value`` names no member.
    """
    try:
        return enum_type(value)
    except ValueError as e:
        allowed = ", ".join(repr(m.value) for m in enum_type)
        raise ConfigError(
            f'"{name}" must be one of {allowed}, got {value!r}; pass one of those values.'
        ) from e
