"""``python tools/infer.py ...`` is ``roilens infer ...``: the command lives in detector/cli/infer.py."""

from detector.cli.infer import run

if __name__ == "__main__":
    run()
