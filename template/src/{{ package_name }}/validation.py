"""Checks on client input that the frameworks do not make."""

from __future__ import annotations


def storable_text(text: str) -> str:
    """The text, if every database stores it as given; ValueError otherwise.

    JSON can carry a lone surrogate ("\\ud800"), which no UTF-8 database can store, and a NUL
    character, which PostgreSQL refuses in text.
    """
    if "\x00" in text:
        raise ValueError("must not contain NUL characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (it holds a lone surrogate)") from None
    return text
