"""``python tools/train.py ...`` is ``roilens train ...``: the command lives in detector/cli/train.py."""

from detector.cli.train import run

if __name__ == "__main__":
    run()
