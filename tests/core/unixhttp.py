"""Synchronous HTTP over a unix socket for ``requests`` (schemathesis, subprocess tests)."""

from __future__ import annotations

import socket
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection
from urllib3.connectionpool import HTTPConnectionPool

__all__ = ["unix_session"]


class _UnixConnection(HTTPConnection):
    def __init__(self, path: str, *args: Any, **kwargs: Any) -> None:
        super().__init__("localhost", *args, **kwargs)
        self._unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(30)
        sock.connect(self._unix_path)
        self.sock = sock


class _UnixPool(HTTPConnectionPool):
    def __init__(self, path: str) -> None:
        super().__init__("localhost")
        self._unix_path = path

    def _new_conn(self) -> _UnixConnection:
        return _UnixConnection(self._unix_path)


class _UnixAdapter(HTTPAdapter):
    def __init__(self, path: str) -> None:
        super().__init__()
        self._pool = _UnixPool(path)

    def get_connection_with_tls_context(self, *args: Any, **kwargs: Any) -> _UnixPool:
        return self._pool

    def close(self) -> None:
        self._pool.close()
        super().close()


def unix_session(path: str, headers: dict[str, str] | None = None) -> requests.Session:
    """A session whose ``http://unix/...`` requests go to the socket at ``path``."""
    session = requests.Session()
    session.trust_env = False
    session.mount("http://unix", _UnixAdapter(path))
    if headers:
        session.headers.update(headers)
    return session
