"""How a producer puts one hook event on the wire: the envelope, and the local
socket's send-and-wait-for-ack (the daemon's side is ``core.wire``)."""

import time

from contextuate_trio.hook.paths import _scan as _scan_once
from contextuate_trio.hook.paths import json_string, parse_json


def envelope(raw: bytes, event_id: str, ts: int, machine: str, parent, ack: bool, redactor=None, decide=None) -> bytes:
    """The wire line for one hook run (``core.wire`` reads it). ``decide``: the
    milliseconds this hook waits for an answer from the dashboard (a permission
    prompt, an MCP server's question; see ``core.decisions``).

    A JSON object is embedded verbatim (newlines between tokens folded, which cannot
    change a valid document); anything else travels as a string, so it is kept too.
    """
    text = raw.decode("utf-8", "replace").lstrip("\ufeff")
    if redactor is not None:
        text = redactor.text(text)
    try:
        is_object = isinstance(parse_json(text), dict)
    except Exception:
        is_object = False
    if is_object:
        payload = text.strip().replace("\r", " ").replace("\n", " ")
    else:
        payload = json_string(text)
    head = '{"kind":"hook","id":"%s","timestamp":%d,"machineId":%s' % (
        event_id,
        ts,
        json_string(machine),
    )
    if parent:
        head += ',"parentSessionId":' + json_string(parent)
    if ack:
        head += ',"ack":true'
    if decide:
        head += ',"decide":%d' % decide
    return (head + ',"payload":' + payload + "}\n").encode("utf-8")


def as_machine(line: bytes, machine: str) -> bytes:
    """A wire line (an envelope, or a usage event) with its top-level ``machineId`` set
    to ``machine``; anything not a JSON object is returned as it is. Only the top-level
    keys are walked (json's C scanner skips each value), up to ``machineId``."""
    try:
        text = line.decode("utf-8")
        want = json_string(machine)
        i = _skip_ws(text, 0)
        if text[i] != "{":
            return line
        i = _skip_ws(text, i + 1)
        while i < len(text) and text[i] == '"':
            key, i = _scan_once(text, i)
            i = _skip_ws(text, i)
            if text[i] != ":":
                return line
            start = _skip_ws(text, i + 1)
            value, end = _scan_once(text, start)
            if key == "machineId":
                if value == machine:
                    return line
                return (text[:start] + want + text[end:]).encode("utf-8")
            i = _skip_ws(text, end)
            if text[i] != ",":
                break
            i = _skip_ws(text, i + 1)
        return line  # no machineId: the monitor gives it the stream's
    except (ValueError, IndexError, StopIteration, UnicodeDecodeError):
        return line


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def deliver_socket(path: str, line: bytes, event_id: str, deadline: float, answer_ms=0, on_ack=None) -> tuple:
    """Send one line and wait for its acknowledgement -> (why not, '' on success;
    the answer's bytes or None). With ``answer_ms``, then wait that long (counted from
    the ack: the daemon's request opens just before it, so it closes first) for the
    daemon's answer line (``{"answer": id, "output": {...}}``), after calling
    ``on_ack``: its ``output`` is what the hook prints for Claude Code. No answer by
    then, the daemon closing, anything odd: None (the hook says nothing)."""
    import _socket

    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        sock.connect(path)
        sock.sendall(line)
        if not answer_ms:  # the line is all it says: the daemon reads its end with it
            sock.shutdown(_socket.SHUT_WR)  # (and closes once it has acknowledged)
        reply = _read_line(sock, b"", deadline)
        if reply is None:
            return "the daemon closed the connection without acknowledging", None
        first, _, rest = reply.partition(b"\n")
        if not first.startswith(('{"ack":"%s"' % event_id).encode()):
            return "the daemon refused the event: " + first.decode("utf-8", "replace").strip(), None
        if not answer_ms:
            return "", None
        if on_ack is not None:
            on_ack()
        return "", _answer(sock, rest, event_id, time.monotonic() + answer_ms / 1000.0)
    except OSError as exc:  # includes timeouts
        return f"{type(exc).__name__}: {exc}", None
    finally:
        sock.close()


def _read_line(sock, buf: bytes, until: float):
    """Bytes up to and past the first newline (None: closed before one came)."""
    while b"\n" not in buf:
        sock.settimeout(max(until - time.monotonic(), 0.001))
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buf += chunk
    return buf


def _answer(sock, buf: bytes, event_id: str, until: float):
    try:
        line = _read_line(sock, buf, until)
    except OSError:  # the wait is over (a timeout): no answer
        return None
    if line is None:
        return None
    return answer_output(line.partition(b"\n")[0], event_id)


def answer_output(line, event_id: str):
    """An answer line's ``output`` (what the hook prints), or None when it is not
    ``{"answer": <event_id>, "output": {...}}``: from the socket here, from the answer
    key in Redis mode (``hook.resp.wait_answer``)."""
    try:
        obj = parse_json(line.decode("utf-8") if isinstance(line, bytes) else line)
    except Exception:
        return None
    if not isinstance(obj, dict) or obj.get("answer") != event_id or not isinstance(obj.get("output"), dict):
        return None
    return obj["output"]
