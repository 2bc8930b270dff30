"""How the dynamic oracle calls a function: its arguments and which one carries the payload."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Arg:
    """One argument of the function under test.

    ``value`` is a benign value that matches no seeded row (so a SELECT returns nothing and an
    UPDATE or DELETE changes nothing). ``kind`` decides the injection payload: a quote-breaking
    tautology for ``"text"``, an ``OR 1=1`` suffix for ``"int"``.
    """
    name: str
    kind: Literal["text", "int"]
    value: str | int


@dataclass(frozen=True)
class CallSpec:
    """The function to call and the argument (by name) that receives the injection payload."""

    function: str
    args: tuple[Arg, ...]
    inject: str

    def __post_init__(self) -> None:
        if self.inject not in {a.name for a in self.args}:
            raise ValueError(f"inject={self.inject!r} is not an argument of {self.function}")

    def to_dict(self) -> dict:
        return {
            "function": self.function,
            "args": [{"name": a.name, "kind": a.kind, "value": a.value} for a in self.args],
            "inject": self.inject,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "CallSpec":
        return cls(d["function"], tuple(Arg(**a) for a in d["args"]), d["inject"])
