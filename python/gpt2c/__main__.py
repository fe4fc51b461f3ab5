"""``python -m gpt2c`` and the ``gpt2c`` console script: the command line, in this process."""

from __future__ import annotations

import signal
import sys


def main() -> None:
    # Ctrl-C ends the command at once, as it ends the native executable (`gpt2c serve` installs
    # its own handler and shuts down gracefully).
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    from gpt2c import _native

    sys.stdout.flush()
    sys.exit(_native.main(["gpt2c", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
