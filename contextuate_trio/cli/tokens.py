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


def _tokens(data: dict) -> list:
    server = data.setdefault("server", {})
    if not isinstance(server, dict):
        raise config_mod.ConfigError("key 'server': expected an object")
    tokens = server.setdefault("tokens", [])
    if not isinstance(tokens, list):
        raise config_mod.ConfigError("key 'server.tokens': expected a list of objects")
    return tokens


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
        print("contextuate-trio: give at least one scope (read, decide, admin)", file=sys.stderr)
        return 2
    path = _config_file()
    try:
        data = _read(path)
        tokens = _tokens(data)
    except (config_mod.ConfigError, ValueError) as exc:
        print(f"contextuate-trio: {path}: {exc}", file=sys.stderr)
        return 2
    if any(isinstance(t, dict) and t.get("name") == args.name for t in tokens):
        print(f"contextuate-trio: a token named {args.name!r} exists; revoke it first", file=sys.stderr)
        return 1
    secret = new_secret()
    tokens.append({"name": args.name, "token": secret, "scopes": [s.value for s in scopes]})
    _write(path, data)
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
    try:
        data = _read(path)
        tokens = _tokens(data)
    except (config_mod.ConfigError, ValueError) as exc:
        print(f"contextuate-trio: {path}: {exc}", file=sys.stderr)
        return 2
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
    url = config_mod.dashboard_url(cfg)
    if args.print_only:
        print(url)
        return 0
    import webbrowser

    if not webbrowser.open(url):
        print(f"no browser to open; the dashboard: {url}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("token", help="named API tokens with scopes (read, decide, admin)")
    tsub = p.add_subparsers(dest="token_command", required=True)
    s = tsub.add_parser("add", help="generate a token, add it to the config and print it (once)")
    s.add_argument("name")
    s.add_argument("--scopes", default="read", help="comma-separated: read, decide, admin (default read)")
    s.set_defaults(func=cmd_add)
    s = tsub.add_parser("list", help="the tokens: name, scopes and a fingerprint (never the token)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_list)
    s = tsub.add_parser("revoke", help="remove a token (server.token for the single unnamed one)")
    s.add_argument("name")
    s.set_defaults(func=cmd_revoke)
    s = sub.add_parser("open", help="open the dashboard in a browser, logged in with a read token")
    s.add_argument("--print", dest="print_only", action="store_true", help="print the URL instead")
    s.set_defaults(func=cmd_open)
