"""A raw-socket HTTP/1.1 client for the tests of the daemon's HTTP port: exact bytes
out, answers parsed strictly enough to notice a wrong frame or a missing one."""

from __future__ import annotations

import socket

import attrs


@attrs.define
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names; a repeated name keeps the last
    body: bytes

    @property
    def closes(self) -> bool:
        return "close" in self.headers.get("connection", "").lower()


def hook_request(body: bytes, *, headers: dict[str, str] | None = None, version: str = "1.1") -> bytes:
    head = {"Host": "127.0.0.1", "Content-Type": "application/json", "Content-Length": str(len(body))}
    head.update(headers or {})
    lines = "".join(f"{k}: {v}\r\n" for k, v in head.items() if v is not None)
    return f"POST /api/hooks HTTP/{version}\r\n{lines}\r\n".encode() + body


class Wire:
    """One connection: ``send`` bytes, ``answer()`` reads exactly one answer."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _more(self) -> None:
        data = self.sock.recv(1 << 16)
        if not data:
            raise EOFError(f"connection closed; unread: {self.buf[:200]!r}")
        self.buf += data

    def answer(self) -> Answer:
        while b"\r\n\r\n" not in self.buf:
            self._more()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        status = int(status_line.split()[1])
        if status < 200:
            return Answer(status, headers, b"")
        if headers.get("transfer-encoding", "").lower() == "chunked":
            return Answer(status, headers, self._chunked())
        length = int(headers.get("content-length", "0"))
        while len(self.buf) < length:
            self._more()
        body, self.buf = self.buf[:length], self.buf[length:]
        return Answer(status, headers, body)

    def _chunked(self) -> bytes:
        body = b""
        while True:
            while b"\r\n" not in self.buf:
                self._more()
            size_line, self.buf = self.buf.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            while len(self.buf) < size + 2:
                self._more()
            body, self.buf = body + self.buf[:size], self.buf[size + 2 :]
            if size == 0:
                return body

    def closed_by_peer(self) -> bool:
        """True once the server has closed its side (EOF, or a reset)."""
        try:
            data = self.sock.recv(1 << 16)
        except ConnectionResetError:
            return True
        self.buf += data
        return data == b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def post_many(port: int, bodies: list[bytes]) -> None:
    """Post every body on one kept-alive connection; each must be stored (200)."""
    with Wire(port) as w:
        for body in bodies:
            w.send(hook_request(body))
            a = w.answer()
            assert a.status == 200, a
