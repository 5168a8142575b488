"""The ``orbitcore`` command.

Each subsystem adds its subcommands through a ``register(subparsers)`` function listed in
``_COMMAND_MODULES``; ``orbitcore <command> --help`` explains each one.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# Modules that define `register(subparsers)`; each adds one or more subcommands.
_COMMAND_MODULES = [
    "orbitcore.demo",
    "orbitcore.physics._cli",
    "orbitcore.metrics._cli",
    "orbitcore.mom._cli",
    "orbitcore.mom._cli_cryoem",
    "orbitcore.em._cli",
    "orbitcore.amortized._cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orbitcore",
        description="orbitcore: fast kernels and reconstruction algorithms for multireference "
                    "alignment and single-particle cryo-EM. Run `orbitcore <command> --help`.",
    )
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch and orbitcore's kernels (default: torch's default)")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.threads is not None:
        import torch  # noqa: PLC0415

        torch.set_num_threads(args.threads)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, KeyError, IndexError, OSError) as exc:
        # orbitcore's errors name the function, the argument and the problem: print, no traceback
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"orbitcore {args.command}: error: {msg}", file=sys.stderr)
        return 1


def console_main() -> int:
    """The ``orbitcore`` console command: :func:`main` in a process of its own, with the
    allocator tuned for long CPU runs (:func:`orbitcore._alloc.tune_allocator`; set
    ``ORBITCORE_TUNE_ALLOCATOR=0`` to keep glibc's defaults). ``main`` itself, which tests and
    scripts call in their own processes, leaves the allocator alone."""
    import os  # noqa: PLC0415

    if os.environ.get("ORBITCORE_TUNE_ALLOCATOR", "1") != "0":
        from ._alloc import tune_allocator  # noqa: PLC0415

        tune_allocator()
    return main()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(console_main())
