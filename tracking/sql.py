"""The bulk statements the intake needs that the ORM does not offer, for SQLite and PostgreSQL.

On PostgreSQL every statement sends one array per column and `unnest`s them, so a batch of
500 rows is one short statement with a handful of parameters: composing a VALUES list of
thousands of placeholders costs more in Python than the database spends on the rows.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from django.db import connection, models


class JsonText(bytes):
    """A JSON value already serialised as UTF-8: stored as it is, not serialised again."""


def _as_is(data: bytes) -> bytes:
    return data


def _fields(model: type[models.Model], names: Sequence[str]) -> list[models.Field[Any, Any]]:
    return [model._meta.get_field(name) for name in names]  # type: ignore[misc]


def _prep(fields: Sequence[models.Field[Any, Any]], rows: Sequence[Sequence[Any]]) -> list[list[Any]]:
    return [
        [
            value.decode() if isinstance(value, JsonText) else field.get_db_prep_save(value, connection)
            for field, value in zip(fields, row, strict=True)
        ]
        for row in rows
    ]


def _quote(name: str | None) -> str:
    assert name is not None  # concrete fields always have a column
    return connection.ops.quote_name(name)


def _unnest(fields: Sequence[models.Field[Any, Any]]) -> str:
    """`unnest(%s::type[], ...)`: its parameters are one list per column (_columns)."""
    casts = ", ".join(f"%b::{field.db_type(connection)}[]" for field in fields)
    return f"unnest({casts})"


def _columns(fields: Sequence[models.Field[Any, Any]], rows: Sequence[Sequence[Any]]) -> list[Any]:
    """The parameters of _unnest: one list per column.

    Values go to psycopg as they are (aware datetimes, numbers, text; JSON wrapped as Jsonb,
    JsonText sent as its bytes), which skips Django's per-value preparation: the intake only
    hands over such values."""
    from psycopg.types.json import Jsonb

    columns: list[list[Any]] = [list(column) for column in zip(*rows, strict=True)]
    for index, field in enumerate(fields):
        if isinstance(field, models.JSONField):
            columns[index] = [
                None if value is None else Jsonb(value, _as_is if isinstance(value, JsonText) else None)
                for value in columns[index]
            ]
    return columns


def _execute_bound(sql: str, params: list[Any], *, fetch: bool) -> list[Any]:
    """Run one statement with server-side binding: arrays travel as parameters in binary,
    not quoted into the SQL text (Django's psycopg cursors bind on the client)."""
    import psycopg

    connection.ensure_connection()
    raw = psycopg.Cursor(connection.connection)
    # Wrapped as Django wraps its own, so query logging, assertNumQueries and error translation
    # (OperationalError with the SQLSTATE the intake retries on) work the same.
    wrap = connection.make_debug_cursor if connection.queries_logged else connection.make_cursor
    cursor = wrap(raw)  # type: ignore[arg-type]
    with cursor:
        cursor.execute(sql, params)
        return list(cursor.fetchall()) if fetch else []


def insert_rows(
    model: type[models.Model],
    names: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    conflict: str | None = None,
    returning: str | tuple[str, ...] | None = None,
) -> list[Any]:
    """INSERT rows; with `conflict`, skip those whose key already exists. Returns the
    `returning` column of the rows that went in (a tuple of columns gives tuples). Concurrent
    inserts of one key wait on the unique index, so exactly one transaction gets each key."""
    if not rows:
        return []
    wanted = (returning,) if isinstance(returning, str) else (returning or ())
    if connection.vendor == "postgresql":
        sql = _insert_sql(model, tuple(names), None, conflict, wanted)
        found = _execute_bound(sql, _columns(_fields(model, names), rows), fetch=bool(wanted))
    else:
        sql = _insert_sql(model, tuple(names), len(rows), conflict, wanted)
        with connection.cursor() as cursor:
            cursor.execute(sql, [value for row in _prep(_fields(model, names), rows) for value in row])
            found = cursor.fetchall() if wanted else []
    if isinstance(returning, str):
        return [row[0] for row in found]
    return [tuple(row) for row in found]


@functools.lru_cache(maxsize=256)
def _insert_sql(
    model: type[models.Model],
    names: tuple[str, ...],
    row_count: int | None,
    conflict: str | None,
    wanted: tuple[str, ...],
) -> str:
    """insert_rows' statement, composed once per shape: from unnest'ed arrays on PostgreSQL
    (row_count None), a VALUES list of row_count rows on SQLite."""
    fields = _fields(model, names)
    table = _quote(model._meta.db_table)
    columns = ", ".join(_quote(field.column) for field in fields)
    if row_count is None:
        sql = f"INSERT INTO {table} ({columns}) SELECT * FROM {_unnest(fields)}"
    else:
        one_row = "(" + ", ".join(["%s"] * len(fields)) + ")"
        sql = f"INSERT INTO {table} ({columns}) VALUES {', '.join([one_row] * row_count)}"
    if conflict:
        sql += f" ON CONFLICT ({_quote(_fields(model, [conflict])[0].column)}) DO NOTHING"
    if wanted:
        sql += " RETURNING " + ", ".join(_quote(field.column) for field in _fields(model, wanted))
    return sql


def update_rows(
    model: type[models.Model],
    *,
    set_names: Sequence[str],
    key: str,
    rows: Sequence[Sequence[Any]],
    unless_newer: str | None = None,
) -> None:
    """UPDATE each row found by `key`: every row holds the values of set_names, then the key.

    With `unless_newer` (one of set_names), a row whose stored value of that column is
    greater than the new one is left alone: a late write never overwrites a newer one."""
    if not rows:
        return
    postgresql = connection.vendor == "postgresql"
    sql = _update_sql(model, tuple(set_names), key, unless_newer, postgresql=postgresql)
    fields = _fields(model, [*set_names, key])
    if postgresql:
        _execute_bound(sql, _columns(fields, rows), fetch=False)
        return
    prepared = _prep(fields, rows)
    if unless_newer:
        position = list(set_names).index(unless_newer)
        prepared = [[*row, row[position]] for row in prepared]
    with connection.cursor() as cursor:
        cursor.executemany(sql, prepared)


@functools.lru_cache(maxsize=64)
def _update_sql(
    model: type[models.Model],
    set_names: tuple[str, ...],
    key: str,
    unless_newer: str | None,
    *,
    postgresql: bool,
) -> str:
    """update_rows' statement, composed once per shape: one UPDATE ... FROM unnest'ed arrays
    on PostgreSQL, a statement per row (executemany) on SQLite."""
    fields = _fields(model, [*set_names, key])
    table = _quote(model._meta.db_table)
    names = [_quote(field.column) for field in fields]
    guard_column = _quote(_fields(model, [unless_newer])[0].column) if unless_newer else ""
    position = set_names.index(unless_newer) if unless_newer else 0
    if postgresql:
        aliases = ", ".join(f"c{i}" for i in range(len(fields)))
        assignments = ", ".join(f"{name} = v.c{i}" for i, name in enumerate(names[:-1]))
        sql = (
            f"UPDATE {table} SET {assignments} FROM {_unnest(fields)} AS v({aliases}) "
            f"WHERE {table}.{names[-1]} = v.c{len(names) - 1}"
        )
        if unless_newer:
            sql += f" AND ({table}.{guard_column} IS NULL OR {table}.{guard_column} <= v.c{position})"
        return sql
    assignments = ", ".join(f"{name} = %s" for name in names[:-1])
    sql = f"UPDATE {table} SET {assignments} WHERE {names[-1]} = %s"
    if unless_newer:
        sql += f" AND ({guard_column} IS NULL OR {guard_column} <= %s)"
    return sql
