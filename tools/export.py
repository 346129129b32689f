"""``python tools/export.py ...`` is ``roilens export ...``: the command lives in detector/cli/export.py."""

from detector.cli.export import run

if __name__ == "__main__":
    run()
