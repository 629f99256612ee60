"""The `threadgate` command."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from serve_app.logs import configure_logging

DEFAULT_DATA_DIR = Path(os.environ.get("THREADGATE_DATA_DIR", ".data"))
DATA_DIR_HELP = "the stack's data directory (default: $THREADGATE_DATA_DIR, else ./.data)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="threadgate", description=__doc__)
    parser.add_argument("--log-level", default=os.environ.get("THREADGATE_LOG_LEVEL", "INFO"))
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="run the gateway and its embedded stack")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, default=8000)
    up.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help=DATA_DIR_HELP)

    accounts = commands.add_parser("accounts", help="manage accounts")
    account_commands = accounts.add_subparsers(dest="account_command", required=True)
    create = account_commands.add_parser("create", help="create an account and its master key")
    create.add_argument("name", help="1 to 200 characters, no control characters")
    create.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help=f"{DATA_DIR_HELP}; the one `threadgate up` runs on, unless MONGODB_URI is set",
    )

    sandbox = commands.add_parser("sandbox", help="run only the sandbox upstream")
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=int, default=8100)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging(args.log_level)

    if args.command == "up":
        from serve_app.cli.up import run_up

        return run_up(args.host, args.port, args.data_dir)

    if args.command == "accounts":
        logging.getLogger().setLevel(logging.WARNING)  # stdout carries only the JSON
        from serve_app.cli.accounts import AccountCommandFailed, print_account

        try:
            print_account(args.name, args.data_dir)
        except AccountCommandFailed as exc:
            # The CLI's own error output, as any command-line tool writes it.
            print(f"threadgate accounts create: {exc}", file=sys.stderr)
            return exc.exit_status
        return 0

    if args.command == "sandbox":
        from serve_app.sandbox.__main__ import main as sandbox_main

        return sandbox_main(["--host", args.host, "--port", str(args.port)])
    return 2
