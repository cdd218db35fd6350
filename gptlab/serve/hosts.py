"""Which Host headers the server answers: its defence against DNS rebinding.

A page on evil.example can make its own name resolve to 127.0.0.1 for a moment; the browser then
sends that page's requests to a server on loopback and lets the page read the answers, since to
the browser it is all one origin. The server cannot see how the browser found the address, but the
browser still names the site in `Host: evil.example`. So only names that mean this machine are
answered: localhost and its subdomains (RFC 6761 reserves them for loopback), loopback addresses,
the address the server listens on when it names one, and what `--allowed-hosts` adds.

Pure ASGI and no fastapi, so `ServeSettings.validate` can check the setting without the server.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable

# Addresses that mean "every interface": they name no host a browser would send.
WILDCARDS = frozenset({"", "0.0.0.0", "::"})
_NAME_RE = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*")
_SHOWN = 64  # characters of a refused Host header repeated in the error: the client's own text, kept short


def host_name(value: str) -> str | None:
    """The host part of a Host header or setting, normalised: lowercase, no port, no IPv6 brackets,
    no trailing dot (``LocalHost.:8000`` -> ``localhost``); None if it is not a host name or address."""
    h = value.strip().lower()
    if h.startswith("["):  # [v6]:port
        name, bracket, rest = h[1:].partition("]")
        if not bracket or (rest and not re.fullmatch(r":\d{1,5}", rest)):
            return None
        try:
            return ipaddress.IPv6Address(name).compressed
        except ValueError:
            return None
    name, colon, port = h.partition(":")
    if colon and not re.fullmatch(r"\d{1,5}", port):
        return None  # a second colon is an IPv6 address without brackets, which a Host header may not carry
    name = name[:-1] if name.endswith(".") else name
    return name if _NAME_RE.fullmatch(name) else None


def _address(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def is_local(name: str) -> bool:
    """A normalised host name that can only mean this machine."""
    if name == "localhost" or name.endswith(".localhost"):
        return True
    ip = _address(name)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    return ip is not None and ip.is_loopback


def setting_name(entry: str) -> str | None:
    """An entry of allowed_hosts (or --host) normalised as `host_name` normalises a Host header naming
    it; None for what no Host header can name (a port, a scheme, a path)."""
    bare = entry.strip().removeprefix("[").removesuffix("]")
    ip = _address(bare)
    if ip is not None:
        return ip.compressed  # "::0001" and "[::1]" are both "::1", as host_name gives it
    return None if ":" in bare else host_name(bare)


def _parts(entries: str | Iterable[str]) -> list[str]:
    # Each entry may list several names ("a.lan,b.lan"): one flag is easier to type than many.
    if isinstance(entries, str):  # ServeSettings(allowed_hosts="a.lan") from Python: one entry, not its letters
        entries = [entries]
    return [p.strip() for entry in entries for p in entry.split(",") if p.strip()]


def check_allowed_hosts(entries: str | Iterable[str]) -> None:
    """ValueError naming the first entry of the setting that is neither '*' nor a host name or address."""
    for part in _parts(entries):
        if part != "*" and setting_name(part) is None:
            raise ValueError(f"allowed_hosts: {part!r} is not a host name or address: give it without scheme "
                             "or port (example.lan, 192.168.1.5, ::1), or '*' to allow any")


class HostAllowlist:
    """The Host headers a server answers (see the module's doc)."""

    def __init__(self, allowed: str | Iterable[str] = (), listen_host: str | None = None):
        parts = _parts(allowed)
        self.any = "*" in parts
        names = {setting_name(p) for p in parts if p != "*"}
        if listen_host is not None and listen_host.strip("[] ") not in WILDCARDS:
            names.add(setting_name(listen_host))
        self.names = frozenset(n for n in names if n)

    def allows(self, header: str | None) -> bool:
        if self.any:
            return True
        name = host_name(header) if header is not None else None
        return name is not None and (is_local(name) or name in self.names)


def _refusal(header: str | None) -> bytes:
    if header is None:
        message = "the request has no Host header: send one naming this server (e.g. localhost)"
    else:
        shown = header if len(header) <= _SHOWN else header[:_SHOWN] + "..."
        message = (f"this server does not answer for host {shown!r}: use localhost or a loopback address, "
                   "or start the server with --allowed-hosts naming the host")
    return json.dumps({"error": {"message": message, "type": "misdirected_request"}}).encode()


class HostCheck:
    """ASGI middleware: 421 (JSON, as every error of the server) for a Host header not in the allowlist.

    It goes outside everything else, so a refused request reaches no route and reads no body.
    """

    def __init__(self, app, allowlist: HostAllowlist):
        self.app = app
        self.allowlist = allowlist

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        hosts = [v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"host"]
        header = hosts[0] if len(hosts) == 1 else None  # none, or two that may disagree: refused
        if self.allowlist.allows(header):
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008})
        body = _refusal(header)
        await send({"type": "http.response.start", "status": 421,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
