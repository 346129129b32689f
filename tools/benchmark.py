"""``python tools/benchmark.py ...`` is ``roilens benchmark ...``: the command lives in detector/cli/benchmark.py."""

from detector.cli.benchmark import run

if __name__ == "__main__":
    run()
