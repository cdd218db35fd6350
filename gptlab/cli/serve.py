"""`gptlab serve`: the web page and the HTTP API over every model in a folder."""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
import warnings

from gptlab.cli.options import Section, add_options, read_options
from gptlab.errors import UserError


def register(sub) -> None:
    from gptlab.serve.settings import ServeSettings  # no fastapi needed to build the parser

    p = sub.add_parser(
        "serve", help="serve models over HTTP: a web page and an OpenAI-compatible API",
        description="Serve every gptlab model folder in --models (or that folder itself, if it is one "
                    "model): a page at / to generate and step through what the model saw, "
                    "OpenAI-compatible /v1/models and /v1/completions, and /v1/explain. "
                    "Listens on loopback only unless --host says otherwise.",
    )
    p.add_argument("--models", default="runs", help="folder of model folders (each with config.json), or one model folder (default: %(default)s)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 opens it to your network (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="port (0 picks a free one and prints it) (default: %(default)s)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads for the whole server (0: half the cores with --engine on, else the cores divided "
                        "among the workers) (default: %(default)s)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    add_options(p, [Section("limits", ServeSettings, "limits and models", aliases={"timeout_s": ["--timeout"]})])
    p.set_defaults(func=run)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _warn_about_host(host: str, allowed_hosts: list[str]) -> None:
    if _is_loopback(host):
        return
    print(f"gptlab serve: warning: listening on {host}: anyone who can reach this machine can use the models",
          file=sys.stderr)
    from gptlab.serve.hosts import WILDCARDS
    if host in WILDCARDS and not allowed_hosts:
        # Requests are answered only for names that mean this machine (the defence against DNS
        # rebinding); on every interface the server cannot know which other names those are.
        print("gptlab serve: note: only requests for localhost or a loopback address are answered: name this "
              "machine as others reach it with --allowed-hosts (e.g. --allowed-hosts myhost.lan,192.168.1.5)",
              file=sys.stderr)


def run(args) -> int:
    try:
        import uvicorn

        from gptlab.infer.generate import GenerationWarning
        from gptlab.serve import ServeSettings, create_app
    except ModuleNotFoundError as e:
        raise UserError(f"gptlab serve needs {e.name}: pip install 'gptlab[serve]'") from None
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port {args.port} is not a port: pick one in 1-65535, or 0 for any free one")
    settings = read_options(args, lambda values: {"limits": ServeSettings()}, "serve")["limits"]
    try:
        settings.validate()
    except ValueError as e:
        raise UserError(f"--{str(e).split()[0].replace('_', '-')}: {e}") from None
    if args.threads < 0:
        raise UserError(f"--threads must be >= 0 (got {args.threads}): 0 picks one from the cores and workers")
    import torch
    if settings.device and settings.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {settings.device}: this torch sees no CUDA GPU; leave --device out to use the CPU")
    from gptlab.api import default_device, resolve_dtype
    resolve_dtype(settings.dtype, settings.device or default_device())  # at start-up, not at the first request
    app = create_app(args.models, settings, listen_host=args.host)
    names = app.state.registry.names()
    if not names:
        print(f"gptlab serve: note: no model folders (with config.json) in {args.models} yet; "
              "they are picked up as they appear", file=sys.stderr)
    _warn_about_host(args.host, settings.allowed_hosts)
    # Bind the socket ourselves so --port 0 works and the real address can be printed before serving.
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as e:
        sock.close()
        raise UserError(f"cannot listen on {args.host}:{args.port} ({e.strerror}): pick another --port") from None
    host, port = sock.getsockname()[:2]
    # A wildcard is no address to browse to, nor a host the server answers for: loopback is both.
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    print(f"gptlab serve: {len(names)} model(s) from {args.models} at http://{shown}:{port}/ "
          f"(API: http://{shown}:{port}/v1, schema: /openapi.json)", flush=True)
    # Unknown words and cut prompts are the client's business, and "default" warnings are remembered
    # per distinct message, which would grow without end on a server that sees many prompts.
    warnings.simplefilter("ignore", GenerationWarning)
    # Small models gain nothing from intra-op threads, and workers x torch's default threads
    # oversubscribe the cores: on a busy 2-core machine a 60-token completion took 5 s instead of 0.1 s.
    # Set only now, when this process is about to become the server.
    # With the engine, one thread per model runs the batched steps; half the cores go to it, the rest
    # to the event loop (HTTP, JSON, decoding ids into text).
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // (settings.workers if settings.engine == "off" else 2)))
    config = uvicorn.Config(app, log_level=args.log_level, timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])
    return 0
