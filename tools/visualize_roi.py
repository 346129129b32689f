"""``python tools/visualize_roi.py ...`` is ``roilens visualize-roi ...``: the command lives in detector/cli/visualize_roi.py."""

from detector.cli.visualize_roi import run

if __name__ == "__main__":
    run()
