"""`python -m serve_app.sandbox --host 127.0.0.1 --port 8790` runs the sandbox alone."""

from __future__ import annotations

import argparse
import asyncio
import logging

from serve_app.sandbox.runner import serve_until_signalled


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m serve_app.sandbox",
        description="Run the sandbox upstream (Anthropic Messages and OpenAI Chat Completions).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=0, help="port to bind; 0 picks a free one (default 0)"
    )
    args = parser.parse_args(argv)

    # The startup line is read by whoever launched the sandbox to learn its port, so the
    # message is printed bare.
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    asyncio.run(serve_until_signalled(args.host, args.port))


if __name__ == "__main__":
    main()
