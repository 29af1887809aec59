"""A real redis-server process per test, on a free port, that tests can stop, hang
(SIGSTOP) and restart. Never the machine's shared Redis."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest
from conftest import free_port

REDIS_SERVER = shutil.which("redis-server")
needs_redis = pytest.mark.skipif(
    REDIS_SERVER is None and not os.environ.get("CI"), reason="redis-server is not installed (make test installs it)"
)


class RedisServer:
    def __init__(self, *extra: str, tls: dict | None = None) -> None:
        self.dir = tempfile.mkdtemp(prefix="ct-redis-")
        self.port = free_port()
        self.extra = list(extra)
        self.tls = tls
        self.proc: subprocess.Popen | None = None

    @property
    def args(self) -> list[str]:
        base = [
            REDIS_SERVER or "redis-server",
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self.dir,
            "--logfile",
            os.path.join(self.dir, "redis.log"),
        ]
        if self.tls:
            base += [
                "--port",
                "0",
                "--tls-port",
                str(self.port),
                "--tls-cert-file",
                self.tls["cert"],
                "--tls-key-file",
                self.tls["key"],
                "--tls-ca-cert-file",
                self.tls["ca"],
                "--tls-auth-clients",
                "no",
            ]
        else:
            base += ["--port", str(self.port)]
        return base + self.extra

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                if self.proc.poll() is not None:
                    raise AssertionError(f"redis-server exited: {self.log()}") from None
                time.sleep(0.02)
        raise AssertionError("redis-server did not start")

    def log(self) -> str:
        try:
            with open(os.path.join(self.dir, "redis.log")) as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    def client(self, **kw):
        import redis

        if self.tls:
            kw.update(ssl=True, ssl_ca_certs=self.tls["ca"])
        return redis.Redis(host="127.0.0.1", port=self.port, **kw)

    def kill(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def make_tls_files(directory: str) -> dict:
    """A throw-away CA and a server certificate for 127.0.0.1/localhost (openssl CLI)."""

    def run(*args):
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=contextuate-test-ca",
    )
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=localhost")
    with open(os.path.join(directory, "ext"), "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run(
        "x509",
        "-req",
        "-in",
        "srv.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "srv.crt",
        "-days",
        "2",
        "-extfile",
        "ext",
    )
    return {k: os.path.join(directory, v) for k, v in (("ca", "ca.crt"), ("cert", "srv.crt"), ("key", "srv.key"))}


@pytest.fixture
def redis_server():
    servers: list[RedisServer] = []

    def make(*extra: str, tls: dict | None = None, start: bool = True) -> RedisServer:
        s = RedisServer(*extra, tls=tls)
        servers.append(s)
        return s.start() if start else s

    yield make
    for s in servers:
        s.close()
