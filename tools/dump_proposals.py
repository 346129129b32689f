"""``python tools/dump_proposals.py ...`` is ``roilens dump-proposals ...``: the command lives in detector/cli/dump_proposals.py."""

from detector.cli.dump_proposals import run

if __name__ == "__main__":
    run()
