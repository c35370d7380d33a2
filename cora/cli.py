"""The ``cora`` command line: thin argument parsing over the library.

Every subcommand lives in the module that owns its work and registers itself here through a
``register(subparsers)`` function, so this file stays a table of contents.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys

from cora.errors import CoraError

_REGISTRARS = (
    "cora.commands.datastore",
    "cora.commands.index",
    "cora.commands.retrieve",
    "cora.commands.answer",
    "cora.commands.evaluate",
    "cora.commands.train",
    "cora.commands.demo",
    "cora.commands.serve",
    "cora.commands.iterate",
)

# Commands whose module imports torch when imported (cora.commands.train builds its flags from cora.training's
# TrainConfig, and cora.training imports torch): registered for real only when they are the command being run.
# Otherwise a stub with the same one-line help lists them, so that `cora --help` and every other command start
# without torch (seconds on a small CPU). tests/test_cli.py checks that the stub's help matches the real one.
_HEAVY = {"cora.commands.train": ("train", "train models (retriever, reader)")}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The ``cora`` parser. Given the ``argv`` about to be parsed, commands in ``_HEAVY`` other than the one it runs
    are stubs; without it, every command is registered in full."""
    import importlib

    command = None if argv is None else next((a for a in argv if not a.startswith("-")), "")
    parser = argparse.ArgumentParser(
        prog="cora",
        description=(
            "cora: answer questions in any language from a multilingual passage datastore "
            "(CORA: mDPR retrieval + multilingual reader + iterative cross-lingual mining)."
        ),
        epilog="Run 'cora <command> --help' for the options of each command.",
    )
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log debug messages, and show the libraries' own output (model-loading progress bars, "
                             "transformers' and torch's warnings) that is hidden by default")
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for module in _REGISTRARS:
        if command is not None and module in _HEAVY and _HEAVY[module][0] != command:
            name, help_text = _HEAVY[module]
            sub.add_parser(name, help=help_text)  # listed by `cora --help`, never run: argv names another command
        else:
            importlib.import_module(module).register(sub)
    return parser


# Warnings of the pinned torch about its own int8 path (Encoder.quantize_int8): the API works, and the notice is
# for torch's developers, not for someone indexing passages. Shown with -v.
_TORCH_NOTICES = (
    (DeprecationWarning, r"torch\.ao\.quantization is deprecated"),
    (UserWarning, r"torch\.quantize_per_tensor, torch\.quantize_per_channel and other quantized tensor creation"),
)


def quiet_libraries() -> None:
    """Hide what the libraries print on their own: transformers' "Loading weights ... 197/197" bar on every model
    load and its advisory warnings, and torch's int8 deprecation notices. Done by the command line only (a
    library import never changes these settings); ``cora -v`` keeps them."""
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # read when transformers is first imported
    if "transformers" in sys.modules:  # already imported (a caller of main() in the same process)
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    else:
        # transformers takes its progress-bar switch from huggingface_hub when it is imported (importing it here
        # would cost every command the seconds of importing torch); huggingface_hub alone is a few ms.
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    for category, message in _TORCH_NOTICES:
        warnings.filterwarnings("ignore", message=message, category=category)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its AVX probing is noise for users
    if not args.verbose:
        quiet_libraries()
    if "WORLD_SIZE" in os.environ:  # started by torchrun: join the process group before any model is built
        from cora.distributed import init_from_env

        init_from_env()
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below, not at interpreter exit
        return code
    except CoraError as err:
        # User mistakes get one line that says what to do, never a traceback.
        print(f"cora: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader of our output went away ('cora datastore info X | head -3'): stop quietly, as Unix tools do.
        # Point stdout at /dev/null so that the interpreter's last flush does not raise again.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a tool killed by it


if __name__ == "__main__":
    sys.exit(main())
