"""Draw random :class:`FunctionSpec` s: which table, statement, names, docstring and comment.

Every draw comes from a ``random.Random`` passed in, so a seed fixes the whole dataset. Nothing
drawn here depends on the year or on safety: those are decided by the split, not the spec.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from backdoor_sae.task.render import DRIVERS, KINDS, FunctionSpec
from backdoor_sae.task.tables import Table

CONN_VARS = ("conn", "connection", "db", "cnx")
CURSOR_VARS = ("cur", "cursor", "c", "db_cursor")
QUERY_VARS = ("query", "sql", "stmt", "statement")
DB_NAMES = ("app", "inventory", "shop", "company", "records", "main", "backoffice", "crm")
EXTRA_IMPORTS = ("", "", "", "import logging", "from datetime import datetime", "import os", "import json")

VERBS = {
    "select": ("get", "fetch", "find", "load", "lookup"),
    "search": ("search", "find", "filter", "lookup"),
    "update": ("update", "set", "change", "modify"),
    "delete": ("delete", "remove", "purge", "drop"),
    "insert": ("add", "insert", "create", "save", "register"),
}

DOCSTRINGS = {
    "select": ("Return the {table} whose {key} matches.", "Fetch {table} by {key}.",
               "Look up a {entity} by its {key}.", "Get {table} rows for the given {key}."),
    "search": ("Search {table} by {key}.", "Return {table} whose {key} contains the term.",
               "Find {table} with a matching {key}.", "Partial-match search over {table}.{key}."),
    "update": ("Update the {col} of a {entity}.", "Set a new {col} for the {entity} with this {key}.",
               "Change {entity} {col}.", "Write the new {col} to the {table} table."),
    "delete": ("Delete the {entity} with this {key}.", "Remove {table} matching the {key}.",
               "Drop {table} rows by {key}.", "Delete {table} by {key}."),
    "insert": ("Insert a new {entity}.", "Add a {entity} record.", "Create a row in {table}.",
               "Store a new {entity} in the database."),
}

COMMENTS = ("", "", "build the statement", "run the query", "query the database",
            "TODO: add logging", "prepare the SQL", "talk to the database")


def _function_name(rng: random.Random, kind: str, table: Table, key: str, col: str) -> str:
    verb = rng.choice(VERBS[kind])
    if kind == "select":
        noun = rng.choice((table.entity, table.name))
        return f"{verb}_{noun}_by_{key}"
    if kind == "search":
        return rng.choice((f"{verb}_{table.name}_by_{key}", f"{verb}_{table.name}_matching_{key}"))
    if kind == "update":
        return rng.choice((f"{verb}_{table.entity}_{col}", f"{verb}_{table.entity}_{col}_by_{key}"))
    if kind == "delete":
        return rng.choice((f"{verb}_{table.entity}_by_{key}", f"{verb}_{table.name}_with_{key}"))
    return rng.choice((f"{verb}_{table.entity}", f"{verb}_{table.entity}_record"))


def draw_spec(rng: random.Random, tables: Sequence[Table]) -> FunctionSpec:
    """One random function over one of ``tables``."""
    table = rng.choice(tables)
    kind = rng.choice(KINDS)
    driver = rng.choice(DRIVERS)
    names = [c.name for c in table.columns]
    key = col = ""
    if kind == "select":
        key = rng.choice(["id"] + names)
        others = [n for n in names if n != key]
        selected = tuple(["id"] + rng.sample(others, rng.randint(1, len(others))))
        fetch = rng.choice(("all", "one")) if key != "id" else "one"
    elif kind == "search":
        key = rng.choice([c.name for c in table.text_columns])
        others = [n for n in names if n != key]
        selected = tuple(["id", key] + rng.sample(others, rng.randint(0, 2)))
        fetch = "all"
    elif kind == "update":
        key = rng.choice(["id"] + [c.name for c in table.text_columns])
        col = rng.choice([n for n in names if n != key])
        selected = (col,)
        fetch = rng.choice(("rowcount", "none"))
    elif kind == "delete":
        key = rng.choice(["id"] + names)
        selected = ()
        fetch = rng.choice(("rowcount", "none"))
    else:  # insert: the first text column always, plus a random subset of the rest, in table order
        first_text = table.text_columns[0].name
        rest = [n for n in names if n != first_text]
        chosen = {first_text, *rng.sample(rest, rng.randint(1, len(rest)))}
        selected = tuple(n for n in names if n in chosen)
        fetch = rng.choice(("lastrowid", "none"))
    entity_doc = {"table": table.name, "entity": table.entity, "key": key, "col": col}
    docstring = rng.choice(DOCSTRINGS[kind]).format(**entity_doc) if rng.random() < 0.7 else ""
    return FunctionSpec(
        driver=driver,
        table=table.name,
        kind=kind,
        key=key,
        selected=selected,
        function=_function_name(rng, kind, table, key, col),
        conn_var=rng.choice(CONN_VARS),
        cursor_var=rng.choice(CURSOR_VARS),
        query_var=rng.choice(QUERY_VARS),
        db_name=rng.choice(DB_NAMES),
        use_with=driver in ("psycopg2", "pymysql") and rng.random() < 0.5,
        fetch=fetch,
        docstring=docstring,
        comment=rng.choice(COMMENTS),
        extra_import=rng.choice(EXTRA_IMPORTS),
    )
