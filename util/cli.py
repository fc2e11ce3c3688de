"""How this project's programs read numbers and end: a mistake in the input is one paragraph, not
a traceback.

    p.add_argument("--epochs", type=cli.at_least(1))       # argparse refuses 0, -1, inf, nan
    if __name__ == "__main__":
        sys.exit(cli.run(main))

`run(main)` calls main(argv). A user error (ValueError, OSError, RuntimeError: the checks of
this project raise them with a message that says what was expected and how to fix it) prints
`error: ...` and exits 2; under DDP each rank's own, prefixed `[rank k/N]` (under --gpus N the
launcher prints each distinct one once; distributed.EveryRank, raised by every rank alike after
they agreed: rank 0 alone). `--debug` or LLB_DEBUG=1 shows the traceback instead. Ctrl-C exits
130 with what was kept and how to continue (`Interrupted`).
"""
import argparse
import math
import os
import sys

from util.distributed import EveryRank, hand_over, is_master, rank_of

USER_ERRORS = (ValueError, OSError, RuntimeError)


def number(kind, *, low: float, above: bool = False, below: float = math.inf):
    """An argparse type: a finite `kind` (int or float) >= low (> low when `above`), < below.
    argparse prints the refusal as "argument --lr: must be > 0, got 0.0"."""
    def parse(text: str):
        value = kind(text)  # not a number: argparse's own "invalid int value: 'x'"
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {value}")
        too_low = value <= low if above else value < low
        if too_low or value >= below:
            bounds = f"> {low:g}" if above else f">= {low:g}"
            if below < math.inf:
                bounds = f"in [{low:g}, {below:g})"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
        return value

    parse.__name__ = kind.__name__
    return parse


def at_least(low: int):
    """An integer option >= low (counts and sizes)."""
    return number(int, low=low)


POSITIVE = number(float, low=0, above=True)  # learning rates, temperatures
NON_NEGATIVE = number(float, low=0)  # weights, floors, epochs of warmup, clipping
FRACTION = number(float, low=0, below=1)  # dropout, label smoothing


class Interrupted(Exception):
    """Ctrl-C, with what was kept and how to continue, e.g. the --resume command."""


def message_of(err: BaseException) -> str:
    """The error's message; for an error re-raised by a DataLoader worker, the original one."""
    text = str(err).strip()
    if "Original Traceback" in text:  # torch's wrapper: the last line is the original error
        text = text.splitlines()[-1]
    return text or type(err).__name__


def run(main, argv: list | None = None) -> int:
    """main(argv) -> the process's exit code (0, 2 for bad input, 130 for Ctrl-C)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv or os.environ.get("LLB_DEBUG") == "1"
    try:
        main(argv)
        return 0
    except (Interrupted, KeyboardInterrupt) as err:
        if is_master():
            print(f"\ninterrupted. {message_of(err) if str(err) else ''}".rstrip(), file=sys.stderr)
        return 130
    except USER_ERRORS as err:
        if debug:
            raise
        rank, world = rank_of()
        if isinstance(err, EveryRank) and rank > 0:
            return 2  # rank 0 says it
        text = (f"error: {message_of(err)}\n(to see the traceback: add --debug, or set "
                f"LLB_DEBUG=1)")
        # under DDP a rank's own error (out of memory, a file missing on its node) is said too:
        # by `--gpus N`'s launcher (each distinct error once), else by the rank itself
        if not hand_over(text):
            print(f"[rank {rank}/{world}] {text}" if world > 1 else text, file=sys.stderr)
        return 2
