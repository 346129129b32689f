"""``python tools/eval.py ...`` is ``roilens eval ...``: the command lives in detector/cli/eval.py."""

from detector.cli.eval import run

if __name__ == "__main__":
    run()
