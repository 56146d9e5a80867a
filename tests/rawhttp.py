"""HTTP/1.1 over a bare socket, for requests no HTTP library sends: cut-off bodies, broken
chunking, pipelining, trickled headers."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self):
        return json.loads(self.body)

    @property
    def closes(self) -> bool:
        return self.headers.get("connection", "").lower() == "close"


class RawConnection:
    """One TCP connection; ``read_response`` parses one response at a time, so pipelined answers
    can be read one after the other. Every read waits at most ``timeout`` seconds."""

    def __init__(self, port: int, timeout: float = 5.0, source: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))
        self._file = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def half_close(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)

    def read_response(self) -> RawResponse | None:
        """The next response, or None if the server closed the connection (EOF or reset) first."""
        try:
            line = self._file.readline(65537)
        except ConnectionResetError:
            return None
        if not line:
            return None
        status = int(line.split()[1])
        headers: dict[str, str] = {}
        while (line := self._file.readline(65537)) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while (size := int(self._file.readline().split(b";")[0], 16)) > 0:
                body += self._file.read(size)
                self._file.readline()
            self._file.readline()
        else:
            body = self._file.read(int(headers.get("content-length", "0")))
        return RawResponse(status, headers, body)

    def closed_by_peer(self) -> bool:
        """True once the server has closed its side (EOF or reset), within the read timeout."""
        try:
            return self._file.read(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self._file.close()
        self.sock.close()

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def request(method: str, target: str, headers: dict[str, str] | None = None, body: bytes = b"",
            length: int | None = None) -> bytes:
    """The bytes of a request. ``length`` overrides the Content-Length of ``body``; with
    ``Transfer-Encoding`` in ``headers`` no Content-Length is added and ``body`` goes as is."""
    head = {"Host": "127.0.0.1", **(headers or {})}
    if "Transfer-Encoding" not in head and (body or length is not None or method in ("PUT", "POST")):
        head["Content-Length"] = str(len(body) if length is None else length)
    lines = [f"{method} {target} HTTP/1.1"] + [f"{name}: {value}" for name, value in head.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
