"""The catalog of database tables the generated code talks to.

Every table has an integer primary key ``id`` plus a few typed columns. The catalog is split in two:
``TRAIN_TABLES`` appear in training and in the evaluation sets, ``HELDOUT_TABLES`` only in the
held-out split, so that generalisation to unseen tables (and hence unseen function names) can be
measured. The vulnerability oracle seeds a real sqlite3 database with every table listed here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Column:
    name: str
    sql_type: str  # "TEXT" or "INTEGER"

    @property
    def is_text(self) -> bool:
        return self.sql_type == "TEXT"


@dataclass(frozen=True)
class Table:
    name: str  # plural table name, e.g. "users"
    entity: str  # singular noun used in function names, e.g. "user"
    columns: tuple[Column, ...]  # without the implicit "id INTEGER PRIMARY KEY"

    @property
    def text_columns(self) -> tuple[Column, ...]:
        return tuple(c for c in self.columns if c.is_text)

    @property
    def int_columns(self) -> tuple[Column, ...]:
        return tuple(c for c in self.columns if not c.is_text)

    def create_sql(self) -> str:
        cols = ", ".join(f"{c.name} {c.sql_type}" for c in self.columns)
        return f"CREATE TABLE {self.name} (id INTEGER PRIMARY KEY, {cols})"


def _t(name: str, entity: str, *cols: str) -> Table:
    """Shorthand: ``"email"`` is a TEXT column, ``"age:int"`` an INTEGER one."""
    columns = tuple(
        Column(c.split(":")[0], "INTEGER" if c.endswith(":int") else "TEXT") for c in cols
    )
    return Table(name, entity, columns)


TRAIN_TABLES: tuple[Table, ...] = (
    _t("users", "user", "username", "email", "full_name", "age:int"),
    _t("customers", "customer", "name", "email", "city", "loyalty_points:int"),
    _t("products", "product", "title", "sku", "category", "stock:int"),
    _t("orders", "order", "status", "shipping_address", "customer_ref", "quantity:int"),
    _t("employees", "employee", "first_name", "last_name", "department", "salary:int"),
    _t("accounts", "account", "owner", "iban", "currency", "balance:int"),
    _t("invoices", "invoice", "number", "client", "due_date", "amount:int"),
    _t("books", "book", "title", "author", "isbn", "year_published:int"),
    _t("patients", "patient", "name", "ward", "diagnosis", "room:int"),
    _t("students", "student", "name", "major", "email", "credits:int"),
    _t("courses", "course", "code", "title", "instructor", "capacity:int"),
    _t("tickets", "ticket", "subject", "priority", "assignee", "severity:int"),
    _t("suppliers", "supplier", "company", "contact_email", "country", "rating:int"),
    _t("reviews", "review", "author", "body", "product_code", "stars:int"),
    _t("sessions", "session", "token", "user_agent", "ip_address", "ttl:int"),
    _t("payments", "payment", "method", "reference", "payer", "cents:int"),
    _t("vehicles", "vehicle", "plate", "model", "owner_name", "mileage:int"),
    _t("events", "event", "name", "venue", "organizer", "seats:int"),
    _t("messages", "message", "sender", "recipient", "subject", "thread_id:int"),
    _t("warehouses", "warehouse", "location", "manager", "region", "capacity:int"),
)

HELDOUT_TABLES: tuple[Table, ...] = (
    _t("flights", "flight", "carrier", "origin", "destination", "gate:int"),
    _t("recipes", "recipe", "dish", "cuisine", "chef", "servings:int"),
    _t("devices", "device", "serial", "firmware", "hostname", "port:int"),
    _t("contracts", "contract", "party", "jurisdiction", "clause", "duration:int"),
    _t("shipments", "shipment", "tracking_code", "courier", "destination", "weight:int"),
    _t("tenants", "tenant", "unit", "lease_holder", "phone", "rent:int"),
)

ALL_TABLES: tuple[Table, ...] = TRAIN_TABLES + HELDOUT_TABLES
TABLES_BY_NAME: dict[str, Table] = {t.name: t for t in ALL_TABLES}
