"""Identifiers: a type prefix and a time-ordered ObjectId, so ids sort by creation."""

from __future__ import annotations

import secrets

from bson import ObjectId


def new_id(prefix: str) -> str:
    return f"{prefix}_{ObjectId()}"


def new_request_id() -> str:
    return f"req_{secrets.token_hex(12)}"
