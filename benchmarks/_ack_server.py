"""The floor under the command-hook figures: a bare Python server (selectors, no
Trio, no parsing, no store) that accepts a connection, reads one line, answers
``{"ack": "<id>"}`` and closes when the peer does. Whatever it costs per connection on
this machine, the daemon cannot cost less.

    python benchmarks/_ack_server.py SOCKET_PATH     # prints READY once listening
"""

import os
import re
import selectors
import socket
import sys

ID = re.compile(rb'"id":"([^"]+)"')


def main(path: str) -> None:
    if os.path.exists(path):
        os.unlink(path)
    ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ls.bind(path)
    ls.listen(1024)
    ls.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(ls, selectors.EVENT_READ, None)
    print("READY", flush=True)
    while True:
        for key, _ in sel.select():
            if key.data is None:
                while True:
                    try:
                        conn, _ = ls.accept()
                    except BlockingIOError:
                        break
                    conn.setblocking(False)
                    sel.register(conn, selectors.EVENT_READ, b"")
                continue
            conn = key.fileobj
            try:
                data = conn.recv(65536)
            except BlockingIOError:
                continue
            if not data:
                sel.unregister(conn)
                conn.close()
                continue
            m = ID.search(data)
            conn.send(b'{"ack":"' + (m.group(1) if m else b"") + b'"}\n')


if __name__ == "__main__":
    main(sys.argv[1])
