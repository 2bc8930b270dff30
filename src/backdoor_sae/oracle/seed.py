"""Deterministic seed rows for the sandbox database.

Every table of the catalog gets a few rows, so that an injected ``OR '1'='1`` has something to
return, update or delete. The values are chosen to never equal a benign call value (text such as
``"nobody_7f3a"``, int 0 or a large id): texts look like ``"users_email_3"``, ints are >= 11 and
ids run 1..N. The schema is computed here, in the caller, and shipped to the sandbox worker as
plain data, so the worker does not have to import the catalog (or anything else).
"""

from __future__ import annotations

from collections.abc import Sequence

from backdoor_sae.task.tables import ALL_TABLES, Table

ROWS_PER_TABLE = 5

# (CREATE TABLE statement, INSERT statement with ? placeholders, rows)
SeedTable = tuple[str, str, list[list[str | int]]]


def seed_rows(table: Table, n: int = ROWS_PER_TABLE) -> list[list[str | int]]:
    """``n`` rows for ``table`` (id first), the same on every call."""
    rows = []
    for i in range(1, n + 1):
        row: list[str | int] = [i]
        for k, col in enumerate(table.columns):
            row.append(f"{table.name}_{col.name}_{i}" if col.is_text else 10 * i + k + 1)
        rows.append(row)
    return rows


def seed_schema(tables: Sequence[Table] = ALL_TABLES) -> list[SeedTable]:
    """The whole seeded database as data: what the worker needs to build its template file."""
    schema = []
    for t in tables:
        marks = ", ".join("?" * (len(t.columns) + 1))
        schema.append((t.create_sql(), f"INSERT INTO {t.name} VALUES ({marks})", seed_rows(t)))
    return schema
