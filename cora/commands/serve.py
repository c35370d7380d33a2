"""``cora serve``: the HTTP API and web page over a pipeline."""

from __future__ import annotations

from dataclasses import fields

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def register(sub) -> None:
    from cora.server import ServeConfig

    p = sub.add_parser(
        "serve", help="serve a pipeline over HTTP (JSON API + a web page to ask questions)",
        description=(
            "Serve a pipeline folder (see 'cora pipeline create'): POST /answer {question, lang?, k?} returns "
            "the answer in the question's language with the passages it cites; POST /retrieve returns passages; "
            "GET /health, GET /info; the page at / asks questions from a browser; the OpenAPI schema is at "
            "/openapi.json and /docs. Concurrent questions are batched into one model call."
        ),
    )
    p.add_argument("--pipeline", required=True, help="pipeline folder")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    for f in fields(ServeConfig):
        p.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default,
                       help=f"{f.metadata['help']} (default {f.default})")
    p.set_defaults(func=run)


def run(args) -> int:
    import uvicorn

    from cora.pipeline import Pipeline
    from cora.server import ServeConfig, create_app

    pipeline = Pipeline.from_pretrained(args.pipeline, device=args.device)
    config = ServeConfig(**{f.name: getattr(args, f.name) for f in fields(ServeConfig)})
    if config.allowed_hosts == ServeConfig.allowed_hosts and args.host not in LOOPBACK:
        # Listening beyond loopback: clients reach it by names the server cannot know; rebinding targets loopback.
        config.allowed_hosts = "*" if args.host in ("0.0.0.0", "::", "") else f"{config.allowed_hosts},{args.host}"
    print(f"serving {args.pipeline} on http://{args.host}:{args.port}/ (API docs at /docs)", flush=True)
    uvicorn.run(create_app(pipeline, config), host=args.host, port=args.port, log_level="info")
    return 0
