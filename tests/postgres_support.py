"""PostgreSQL for the template's tests: the server of TEST_POSTGRES_URL and databases on it."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import psycopg

SERVER_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _admin() -> psycopg.Connection:
    # CREATE and DROP DATABASE cannot run inside a transaction.
    return psycopg.connect(SERVER_URL, autocommit=True, connect_timeout=5)


def unreachable_reason() -> str:
    """Why the server of TEST_POSTGRES_URL cannot be used; '' when it answers."""
    try:
        with _admin():
            return ""
    except psycopg.Error as error:
        return f"PostgreSQL at TEST_POSTGRES_URL does not answer: {str(error).strip()}"


def database_url(name: str) -> str:
    """The URL of the database `name` on the server of TEST_POSTGRES_URL."""
    return urlsplit(SERVER_URL)._replace(path=f"/{name}").geturl()


def create_database(name: str) -> str:
    """A new, empty database; its URL."""
    with _admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    return database_url(name)


def drop_database(name: str) -> None:
    # FORCE: a server that a failed test left behind may still hold a connection.
    with _admin() as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def query(url: str, sql: str) -> list[tuple]:
    """The rows of one query on the database at `url`."""
    with psycopg.connect(url, connect_timeout=5) as connection:
        return connection.execute(sql).fetchall()


def execute(url: str, sql: str) -> None:
    """One statement on the database at `url`, committed."""
    with psycopg.connect(url, connect_timeout=5) as connection:
        connection.execute(sql)
