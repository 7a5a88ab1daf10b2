"""Traffic policies: rate limits, usage caps and access rules, evaluated at admission.

`PolicyEngine.admit` runs once per model request, after routing picked the primary target, and
returns an `Admission`: the verdict of every matching policy (the decision trail of the usage
record), the `x-ratelimit-*` headers, the error to answer when an enforcing policy denies, and
the reservations to settle with the actual usage (`settle`) or give back (`release`) when the
request ends. Exactly one of `settle` and `release` is called per admission.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tollway.server.errors import ApiError
from tollway.usage import Usage
from tollway.usage.record import PolicyVerdict

if TYPE_CHECKING:
    from tollway.pipeline import ModelRequest
    from tollway.routing import Target


class Admission:
    __slots__ = ("denied", "headers", "verdicts")

    def __init__(
        self,
        verdicts: list[PolicyVerdict] | None = None,
        headers: list[tuple[str, str]] | None = None,
        denied: ApiError | None = None,
    ) -> None:
        self.verdicts: list[PolicyVerdict] = verdicts if verdicts is not None else []
        self.headers: list[tuple[str, str]] = headers if headers is not None else []
        self.denied = denied

    def settle(self, usage: Usage, cost_micro_usd: int | None) -> None:
        """The request ended with this usage (and cost, `None` when unpriced)."""

    def release(self) -> None:
        """The request ended without a model call: give back what admission reserved."""


class PolicyEngine:
    """No policies: every request is admitted with nothing to explain."""

    def admit(self, request: ModelRequest, target: Target) -> Admission:
        return Admission()
