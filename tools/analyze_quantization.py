"""``python tools/analyze_quantization.py ...`` is ``roilens analyze ...``: the command lives in detector/cli/analyze.py."""

from detector.cli.analyze import run

if __name__ == "__main__":
    run()
