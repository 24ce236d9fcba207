"""The two statements the intake needs that the ORM does not offer, for SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db import connection, models


def _prep(model: type[models.Model], names: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[list[Any]]:
    fields = [model._meta.get_field(name) for name in names]
    return [
        [field.get_db_prep_save(value, connection) for field, value in zip(fields, row, strict=True)]  # type: ignore[union-attr]
        for row in rows
    ]


def _column(model: type[models.Model], name: str) -> str:
    return connection.ops.quote_name(str(model._meta.get_field(name).column))  # type: ignore[union-attr]


def insert_ignoring_conflicts(
    model: type[models.Model],
    names: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    conflict: str,
    returning: str,
) -> list[Any]:
    """INSERT rows, skip those whose `conflict` column already exists, return `returning` of
    the rows that went in. Concurrent inserts of the same key wait on the unique index, so
    exactly one transaction gets each key."""
    if not rows:
        return []
    columns = ", ".join(_column(model, name) for name in names)
    one_row = "(" + ", ".join(["%s"] * len(names)) + ")"
    sql = (
        f"INSERT INTO {connection.ops.quote_name(model._meta.db_table)} ({columns}) "
        f"VALUES {', '.join([one_row] * len(rows))} "
        f"ON CONFLICT ({_column(model, conflict)}) DO NOTHING RETURNING {_column(model, returning)}"
    )
    params = [value for row in _prep(model, names, rows) for value in row]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return [row[0] for row in cursor.fetchall()]


def update_many(
    model: type[models.Model], *, set_names: Sequence[str], where: str, rows: Sequence[Sequence[Any]], extra_where: str = ""
) -> None:
    """UPDATE model SET <set_names> WHERE <where> = %s [AND extra_where], once per row.

    Each row holds the values of set_names, then the where value, then extra_where's params."""
    if not rows:
        return
    assignments = ", ".join(f"{_column(model, name)} = %s" for name in set_names)
    sql = (
        f"UPDATE {connection.ops.quote_name(model._meta.db_table)} SET {assignments} "
        f"WHERE {_column(model, where)} = %s {extra_where}"
    )
    width = len(set_names) + 1
    prepared = _prep(model, [*set_names, where], [row[:width] for row in rows])
    with connection.cursor() as cursor:
        cursor.executemany(sql, [[*head, *row[width:]] for head, row in zip(prepared, rows, strict=True)])
