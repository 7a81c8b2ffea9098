"""Fast seeding of closed grants (history) straight into Azurite's Table API.

Twenty thousand grants through `GrantStore.create` take ~100 s on 2 cores, nearly all of it azure-core's
per-request Python work in this process. History only has to *exist* for the sweep benchmark (the sweep must
never read it), so it is written here with the same entities `GrantStore.create` writes for a closed grant —
the grant record and the caller's `principals` row, built by the store's own entity functions — over plain
keep-alive HTTP with Shared Key signing, several connections at once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from email.utils import formatdate
from typing import Any
from urllib.parse import urlsplit

from lab.azurite import ACCOUNT_KEY, ACCOUNT_NAME

API_VERSION = "2019-02-02"


class RawTables:
    """Insert entities into Azurite's tables with one keep-alive connection per thread."""

    def __init__(self, table_endpoint: str) -> None:
        parts = urlsplit(table_endpoint)
        self._host, self._port = parts.hostname or "127.0.0.1", parts.port or 80
        self._key = base64.b64decode(ACCOUNT_KEY)
        self._local = threading.local()

    def insert(self, table: str, entity: dict[str, Any], *, upsert: bool = False) -> None:
        """Insert one entity (or insert-or-replace it when `upsert`); RuntimeError on any other answer."""
        if upsert:
            keys = f"PartitionKey='{_quote(entity['PartitionKey'])}',RowKey='{_quote(entity['RowKey'])}'"
            path, method = f"/{ACCOUNT_NAME}/{table}({keys})", "PUT"
        else:
            path, method = f"/{ACCOUNT_NAME}/{table}", "POST"
        body = json.dumps(entity).encode()
        date = formatdate(usegmt=True)
        content_type = "application/json"
        to_sign = f"{method}\n\n{content_type}\n{date}\n/{ACCOUNT_NAME}{path}"
        signature = base64.b64encode(hmac.new(self._key, to_sign.encode(), hashlib.sha256).digest()).decode()
        headers = {
            "x-ms-date": date,
            "x-ms-version": API_VERSION,
            "Content-Type": content_type,
            "Accept": "application/json;odata=nometadata",
            "Prefer": "return-no-content",
            "DataServiceVersion": "3.0",
            "Authorization": f"SharedKey {ACCOUNT_NAME}:{signature}",
        }
        connection = self._connection()
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            answer = response.read()
        except (OSError, http.client.HTTPException):
            self._local.connection = None
            raise
        if response.status not in (201, 204):
            raise RuntimeError(f"Azurite {method} {table}: {response.status} {answer[:300]!r}")

    def _connection(self) -> http.client.HTTPConnection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = http.client.HTTPConnection(self._host, self._port, timeout=60)
            self._local.connection = connection
        return connection


def _quote(key: str) -> str:
    from urllib.parse import quote

    return quote(key.replace("'", "''"), safe="")


def insert_all(
    tables: RawTables, rows: Iterable[tuple[str, dict[str, Any], bool]], *, workers: int = 12
) -> int:
    """Insert every (table, entity, upsert) row, `workers` at a time; the number inserted."""
    items = list(rows)

    def one(item: tuple[str, dict[str, Any], bool]) -> None:
        table, entity, upsert = item
        tables.insert(table, entity, upsert=upsert)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="seed") as pool:
        list(pool.map(one, items))
    return len(items)


def closed_grant_rows(prefix: str, grants: Iterable[Any]) -> Iterable[tuple[str, dict[str, Any], bool]]:
    """What `GrantStore.create` writes for a closed grant: the `principals` row (upserted) and the record."""
    from jitbroker.store import _grant_entity, escape_key

    principals: Callable[[Any], dict[str, Any]] = lambda grant: {  # noqa: E731
        "PartitionKey": escape_key(grant.principal),
        "RowKey": escape_key(grant.id),
        "grant_id": grant.id,
    }
    for grant in grants:
        yield f"{prefix}principals", principals(grant), True
        yield f"{prefix}grants", _grant_entity(grant), False
