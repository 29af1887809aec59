"""``contextuate-trio token add|list|revoke`` (named tokens with scopes, in
``server.tokens`` of the config) and ``contextuate-trio open`` (the dashboard, logged
in with a read token carried in the URL's fragment). The file is edited as written
(other keys untouched) and replaced atomically, 0600; a running daemon takes the new
tokens within a second (``daemon/tokens.py``)."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sys

from contextuate_trio import config as config_mod
from contextuate_trio.core.access import LEGACY_TOKEN_NAME, Scope, parse_scopes
from contextuate_trio.hook import paths as hook_paths

# What ``init`` writes: a token for the dashboard and the CLI that reads and labels
# sessions but cannot answer Claude Code (``decide`` is given only by ``token add``).
INIT_TOKEN_NAME = "default"
INIT_SCOPES = ("read", "admin")
# What ``hooks install --otel`` writes into Claude Code's settings (``env``, a file
# other programs read): a token that can bring events in and read nothing.
OTEL_TOKEN_NAME = "otel"
OTEL_SCOPES = ("ingest",)


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def init_entry() -> dict:
    return {"name": INIT_TOKEN_NAME, "token": new_secret(), "scopes": list(INIT_SCOPES)}


def fingerprint(secret: str) -> str:
    """What ``token list`` shows instead of the token: enough to tell two apart."""
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()[:12]


def _config_file() -> str:
    env = dict(os.environ)
    home = os.path.abspath(os.path.expanduser(hook_paths.home_dir(env)))
    return hook_paths.config_path(env, home)


def _read(path: str) -> dict:
    """The config as written (no defaults merged in); {} when there is none."""
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read())
    except FileNotFoundError:
        return {}
    if not isinstance(data, dict):
        raise config_mod.ConfigError(f"{path}: the config must be a JSON object")
    return data


def _write(path: str, data: dict) -> None:
    home = os.path.dirname(path) or "."
    os.makedirs(home, mode=0o700, exist_ok=True)
    hook_paths.write_atomic(path, (json.dumps(data, indent=2) + "\n").encode(), durable=True)


def _read_tokens(path: str) -> tuple[dict, list] | None:
    """The config file and its ``server.tokens``; None (said on stderr) when it
    cannot be read or its tokens are malformed."""
    try:
        data = _read(path)
        return data, _tokens(data)
    except (config_mod.ConfigError, ValueError) as exc:
        print(f"contextuate-trio: {path}: {exc}", file=sys.stderr)
        return None


def _tokens(data: dict) -> list:
    server = data.setdefault("server", {})
    if not isinstance(server, dict):
        raise config_mod.ConfigError("key 'server': expected an object")
    tokens = server.setdefault("tokens", [])
    if not isinstance(tokens, list):
        raise config_mod.ConfigError("key 'server.tokens': expected a list of objects")
    return tokens


def _has_token(data: dict) -> bool:
    """The config (as written) sets some token: the API refuses anonymous clients."""
    server = data.get("server")
    if not isinstance(server, dict):
        return False
    tokens = server.get("tokens")
    named = isinstance(tokens, list) and any(isinstance(t, dict) and t.get("token") for t in tokens)
    return bool(server.get("token")) or named


def _loads(path: str) -> config_mod.ConfigError | None:
    """Why the daemon could not start with this config file (None: it could)."""
    try:
        config_mod.load({**os.environ, "CONTEXTUATE_CONFIG": path})
    except config_mod.ConfigError as exc:
        return exc
    return None


def _add_entry(path: str, data: dict, name: str, scopes: list[str]) -> str:
    """A new token ``name`` with ``scopes`` appended to the config ``data`` (read from
    ``path``) and written; its secret. A config that loaded and would no longer load
    is put back as it was (ConfigError): a token must not stop the daemon starting."""
    tokens = _tokens(data)
    secret = new_secret()
    tokens.append({"name": name, "token": secret, "scopes": scopes})
    try:
        with open(path, "rb") as f:
            before: bytes | None = f.read()
    except FileNotFoundError:
        before = None
    loaded = _loads(path) is None
    _write(path, data)
    why = _loads(path) if loaded else None
    if why is not None:
        if before is None:
            os.unlink(path)
        else:
            hook_paths.write_atomic(path, before, durable=True)
        raise why
    return secret


def ingest_token(path: str | None = None) -> str | None:
    """The config's ``otel`` token (scope ``ingest`` only), made (and written) when
    missing; None when the config sets no token at all (the API is open on loopback).
    ConfigError when the config cannot be read or written, or holds an ``otel`` token
    with more than ``ingest`` (it is not given to Claude Code's settings)."""
    path = path or _config_file()
    data = _read(path)
    existing = _tokens(data)  # (ConfigError for a malformed server.tokens)
    for t in existing:
        if isinstance(t, dict) and t.get("name") == OTEL_TOKEN_NAME:
            scopes = t.get("scopes", ["read"])
            if scopes != list(OTEL_SCOPES) or not isinstance(t.get("token"), str) or not t["token"]:
                raise config_mod.ConfigError(
                    f"{path}: the token {OTEL_TOKEN_NAME!r} has scopes {scopes!r}, not only 'ingest'; "
                    f"`contextuate-trio token revoke {OTEL_TOKEN_NAME}` and install again"
                )
            return t["token"]
    if not _has_token(data):
        return None
    return _add_entry(path, data, OTEL_TOKEN_NAME, list(OTEL_SCOPES))


def cmd_add(args) -> int:
    if not config_mod.TOKEN_NAME_RE.match(args.name) or args.name == LEGACY_TOKEN_NAME:
        print(f"contextuate-trio: {args.name!r} is not a token name (A-Z a-z 0-9 . _ -)", file=sys.stderr)
        return 2
    try:
        scopes = sorted(parse_scopes(s.strip() for s in args.scopes.split(",") if s.strip()))
    except ValueError as exc:
        print(f"contextuate-trio: {exc}", file=sys.stderr)
        return 2
    if not scopes:
        print("contextuate-trio: give at least one scope (read, ingest, decide, admin)", file=sys.stderr)
        return 2
    path = _config_file()
    loaded = _read_tokens(path)
    if loaded is None:
        return 2
    data, tokens = loaded
    if any(isinstance(t, dict) and t.get("name") == args.name for t in tokens):
        print(f"contextuate-trio: a token named {args.name!r} exists; revoke it first", file=sys.stderr)
        return 1
    try:
        secret = _add_entry(path, data, args.name, [s.value for s in scopes])
    except config_mod.ConfigError as exc:
        print(f"contextuate-trio: the token was not added (the config would not load): {exc}", file=sys.stderr)
        return 2
    print(secret)  # stdout: the token alone, for scripts; it is not shown again
    print(f"added token {args.name!r} ({', '.join(s.value for s in scopes)}) to {path}", file=sys.stderr)
    return 0


def cmd_list(args) -> int:
    cfg = config_mod.load_or_report()
    if cfg is None:
        return 2
    rows: list[dict] = []
    if cfg.server.token:
        every = [s.value for s in Scope]
        rows.append({"name": LEGACY_TOKEN_NAME, "scopes": every, "fingerprint": fingerprint(cfg.server.token)})
    rows += [{"name": t.name, "scopes": list(t.scopes), "fingerprint": fingerprint(t.token)} for t in cfg.server.tokens]
    if args.json:
        print(json.dumps({"tokens": rows}, indent=2))
        return 0
    if not rows:
        print(config_mod.no_token_warning(cfg))
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        print(f"{r['name']:<{width}}  {','.join(r['scopes']):<18}  {r['fingerprint']}")
    return 0


def cmd_revoke(args) -> int:
    path = _config_file()
    loaded = _read_tokens(path)
    if loaded is None:
        return 2
    data, tokens = loaded
    if args.name == LEGACY_TOKEN_NAME and data["server"].get("token"):
        data["server"]["token"] = None
    else:
        kept = [t for t in tokens if not (isinstance(t, dict) and t.get("name") == args.name)]
        if len(kept) == len(tokens):
            print(f"contextuate-trio: no token named {args.name!r} in {path}", file=sys.stderr)
            return 1
        data["server"]["tokens"] = kept
    _write(path, data)
    print(f"revoked token {args.name!r}; a running daemon refuses it within a second")
    return 0


def cmd_open(args) -> int:
    cfg = config_mod.load_or_report()
    if cfg is None:
        return 2
    token = None
    if args.token:  # e.g. one with the decide scope: its page may answer Claude Code
        token = next((t.token for t in cfg.server.tokens if t.name == args.token), None)
        if token is None:
            print(
                f"contextuate-trio: no token named {args.token!r} (see `contextuate-trio token list`)", file=sys.stderr
            )
            return 2
    url = config_mod.dashboard_url(cfg, token)
    if args.print_only:
        print(url)
        return 0
    import webbrowser

    if not webbrowser.open(url):
        print(f"no browser to open; the dashboard: {url}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("token", help="named API tokens with scopes (read, ingest, decide, admin)")
    tsub = p.add_subparsers(dest="token_command", required=True)
    s = tsub.add_parser("add", help="generate a token, add it to the config and print it (once)")
    s.add_argument("name")
    s.add_argument(
        "--scopes",
        "--scope",
        dest="scopes",
        default="read",
        help="comma-separated: read, ingest (event intake only), decide, admin (default read)",
    )
    s.set_defaults(func=cmd_add)
    s = tsub.add_parser("list", help="the tokens: name, scopes and a fingerprint (never the token)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_list)
    s = tsub.add_parser("revoke", help="remove a token (server.token for the single unnamed one)")
    s.add_argument("name")
    s.set_defaults(func=cmd_revoke)
    s = sub.add_parser("open", help="open the dashboard in a browser, logged in with a read token")
    s.add_argument("--print", dest="print_only", action="store_true", help="print the URL instead")
    s.add_argument("--token", metavar="NAME", help="log in with this named token (default: one that can read)")
    s.set_defaults(func=cmd_open)
