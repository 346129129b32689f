"""``python tools/convert_dataset.py ...`` is ``roilens convert ...``: the command lives in detector/cli/convert.py."""

from detector.cli.convert import run

if __name__ == "__main__":
    run()
