"""``python tools/visualize_data.py ...`` is ``roilens visualize-data ...``: the command lives in detector/cli/visualize_data.py."""

from detector.cli.visualize_data import run

if __name__ == "__main__":
    run()
