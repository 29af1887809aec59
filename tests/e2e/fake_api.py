"""A scripted fake of the Anthropic Messages API, for the real Claude Code CLI.

It listens on 127.0.0.1, answers ``POST /v1/messages`` (streaming SSE or plain JSON)
and ``/v1/messages/count_tokens``, and decides each reply from the conversation it is
sent, so one server serves a main agent and its sub-agents at once:

- a line ``SCRIPT: name`` in the conversation's first user message picks a script;
  step *n* of that script answers the request that holds *n* assistant turns already;
- a step is a list of blocks: ``("text", "...")`` or ``("tool", name, input)``; a
  ``("gate", name)`` block holds that reply until the test calls ``open_gate(name)``
  (to order a sub-agent's steps after its parent's, without sleeping);
- past its last step a script answers a short text ("done"), which ends the turn;
- a compaction request (``/compact``) gets ``COMPACT_SUMMARY``;
- ``FAIL: <status> <error type>`` instead of a script makes every reply that HTTP error
  (a stop failure, without retries worth waiting for: see ``FAIL_STATUS``).

Every reply carries ``usage``. Requests are kept (``requests``) for assertions, and the
``tool_result`` blocks they sent back (``tool_results``).
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Block = tuple
Script = list[list[Block]]

USAGE_IN = 120
USAGE_OUT = 30
COMPACT_SUMMARY = "<analysis>Two commands ran.</analysis>\n<summary>Summary of the conversation so far: one command worked, one failed.</summary>"
GATE_TIMEOUT = 30.0
_SCRIPT_RE = re.compile(r"SCRIPT:\s*([\w.-]+)")
_FAIL_RE = re.compile(r"FAIL:\s*(\d{3})\s+([\w]+)")


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    out = []
    for block in content or ():
        if isinstance(block, dict):
            if block.get("type") == "text":
                out.append(block.get("text", ""))
            elif block.get("type") == "tool_result":
                out.append(_text_of(block.get("content")))
    return "\n".join(out)


def _user_texts(messages: list[dict]) -> list[str]:
    return [_text_of(m.get("content")) for m in messages if m.get("role") == "user"]


class FakeAnthropic:
    """The server; ``scripts`` maps a script name to its steps."""

    def __init__(self, scripts: dict[str, Script] | None = None) -> None:
        self.scripts: dict[str, Script] = dict(scripts or {})
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        self._gates: dict[str, threading.Event] = {}
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-anthropic", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeAnthropic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    # --- deciding a reply -----------------------------------------------------------
    def reply_for(self, body: dict) -> tuple[int, dict | list[Block]]:
        """(HTTP status, an error body) or (200, the blocks to answer with)."""
        messages = body.get("messages") or []
        users = _user_texts(messages)
        first = next((t for t in users if "SCRIPT:" in t or "FAIL:" in t), "")
        fail = _FAIL_RE.search(first)
        if fail:
            status, kind = int(fail.group(1)), fail.group(2)
            return status, {"type": "error", "error": {"type": kind, "message": f"fake {kind}"}}
        if _is_side_request(body):
            return 200, [("text", "Fake title")]
        if _is_compaction(users[-1] if users else ""):
            return 200, [("text", COMPACT_SUMMARY)]
        m = _SCRIPT_RE.search(first)
        script = self.scripts.get(m.group(1), []) if m else []
        turns = sum(1 for msg in messages if msg.get("role") == "assistant")
        if turns < len(script):
            step = list(script[turns])
            for block in step:
                if block[0] == "gate":
                    self.gate(block[1]).wait(GATE_TIMEOUT)
            return 200, [b for b in step if b[0] != "gate"]
        return 200, [("text", "done")]

    def gate(self, name: str) -> threading.Event:
        """The gate a ``("gate", name)`` block waits on; ``open_gate`` opens it."""
        with self._lock:
            return self._gates.setdefault(name, threading.Event())

    def open_gate(self, name: str) -> None:
        self.gate(name).set()

    def tool_results(self, script: str | None = None) -> list[dict]:
        """The ``tool_result`` blocks sent back to the model (each once, in order); with
        ``script``, only those of the conversations ``SCRIPT: script`` runs."""
        with self._lock:
            requests = list(self.requests)
        out: list[dict] = []
        seen: set = set()
        for r in requests:
            messages = r["body"].get("messages") or []
            if script is not None:
                first = next((t for t in _user_texts(messages) if "SCRIPT:" in t), "")
                m = _SCRIPT_RE.search(first)
                if not m or m.group(1) != script:
                    continue
            for msg in messages:
                if msg.get("role") != "user" or not isinstance(msg.get("content"), list):
                    continue
                for block in msg["content"]:
                    if isinstance(block, dict) and block.get("type") == "tool_result":
                        if block.get("tool_use_id") not in seen:
                            seen.add(block.get("tool_use_id"))
                            out.append(block)
        return out

    # --- HTTP -------------------------------------------------------------------------
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                size = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(size) if size else b""
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {}
                path = self.path.split("?")[0]
                with fake._lock:
                    fake.requests.append({"path": path, "body": body})
                if path.endswith("/count_tokens"):
                    return self._json(200, {"input_tokens": USAGE_IN})
                if not path.endswith("/v1/messages"):
                    return self._json(404, {"type": "error", "error": {"type": "not_found_error", "message": path}})
                status, answer = fake.reply_for(body)
                if status != 200:
                    return self._json(status, answer)
                assert isinstance(answer, list)
                message = _message(body.get("model") or "claude-sonnet-4-5", answer)
                if body.get("stream"):
                    return self._sse(message)
                return self._json(200, message)

            def do_GET(self) -> None:  # noqa: N802
                self._json(404, {"type": "error", "error": {"type": "not_found_error", "message": self.path}})

            def do_HEAD(self) -> None:  # noqa: N802
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _json(self, status: int, obj: dict) -> None:
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("request-id", "req_" + uuid.uuid4().hex[:20])
                if status == 429:
                    self.send_header("retry-after", "0")
                    self.send_header("x-should-retry", "false")
                self.end_headers()
                self.wfile.write(data)

            def _sse(self, message: dict) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Connection", "close")
                self.send_header("request-id", "req_" + uuid.uuid4().hex[:20])
                self.end_headers()
                for name, data in _sse_events(message):
                    self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
                self.wfile.flush()
                self.close_connection = True

        return Handler


def _is_compaction(last_user_text: str) -> bool:
    """Claude Code's compaction request (``/compact`` or auto-compact): the conversation
    so far, then a user turn asking for "a detailed summary of the conversation so far"
    as an <analysis> block and a <summary> block, tools forbidden."""
    t = last_user_text.lower()
    return "summary of the conversation so far" in t or ("<summary>" in t and "text only" in t)


def _is_side_request(body: dict) -> bool:
    """Claude Code's own small requests (a title, a topic): no tools offered."""
    return not body.get("tools") and "SCRIPT:" not in json.dumps(body.get("messages", []))[:20000]


def _message(model: str, blocks: list[Block]) -> dict:
    content: list[dict] = []
    for block in blocks:
        if block[0] == "text":
            content.append({"type": "text", "text": block[1]})
        else:
            _, name, tool_input = block
            content.append(
                {"type": "tool_use", "id": "toolu_" + uuid.uuid4().hex[:22], "name": name, "input": tool_input}
            )
    stop = "tool_use" if any(c["type"] == "tool_use" for c in content) else "end_turn"
    return {
        "id": "msg_" + uuid.uuid4().hex[:22],
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {
            "input_tokens": USAGE_IN,
            "output_tokens": USAGE_OUT,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }


def _sse_events(message: dict) -> list[tuple[str, dict]]:
    head = {**message, "content": [], "stop_reason": None, "usage": {**message["usage"], "output_tokens": 1}}
    out: list[tuple[str, dict]] = [("message_start", {"type": "message_start", "message": head})]
    for i, block in enumerate(message["content"]):
        if block["type"] == "text":
            start = {"type": "text", "text": ""}
            delta = {"type": "text_delta", "text": block["text"]}
        else:
            start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
        out.append(("content_block_start", {"type": "content_block_start", "index": i, "content_block": start}))
        out.append(("content_block_delta", {"type": "content_block_delta", "index": i, "delta": delta}))
        out.append(("content_block_stop", {"type": "content_block_stop", "index": i}))
    out.append(
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                "usage": {"output_tokens": message["usage"]["output_tokens"]},
            },
        )
    )
    out.append(("message_stop", {"type": "message_stop"}))
    return out
