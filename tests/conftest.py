"""Shared test helpers: a tiny model built from the real configs, and fixture paths."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Dataset files in other tools' formats (VOC, YOLO, COCO), written by tests/fixtures/formats/make_fixtures.py.
FORMATS = ROOT / "tests" / "fixtures" / "formats"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


def compose_config(name: str = "train", overrides: list[str] | None = None):
    from hydra import compose, initialize_config_dir

    from detector.cli.config import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(config_name=name, overrides=overrides or [])


TINY_MODEL = [
    "model.backbone.width=0.0625",
    "model.roi_heads.box_head.representation_size=32",
    "model.transform.min_size=128",
    "model.transform.max_size=192",
]


def tiny_model(num_classes: int = 3, overrides: list[str] | None = None, class_names=None):
    from detector.cli.config import build_model

    cfg = compose_config("train", TINY_MODEL + (overrides or []))
    names = class_names if class_names is not None else [f"class{i}" for i in range(1, num_classes + 1)]
    return build_model(cfg.model, class_names=names)


def run_in_process(command: str, args: list[str], cwd: Path, capsys) -> "CommandResult":
    """``roilens <command> ARGS`` in this process, from ``cwd``: its exit code, stdout and stderr.

    The same code path as the console command (argv check, Hydra app, one-line errors), without the
    seconds a new interpreter spends importing torch; one subprocess smoke test per tool stays.
    """
    import logging
    import os
    import sys

    from detector.cli import main as cli

    root, handlers = logging.getLogger(), list(logging.getLogger().handlers)
    old_cwd, old_argv = os.getcwd(), sys.argv
    capsys.readouterr()
    code = 0
    try:
        os.chdir(cwd)
        cli.main([command, *args])
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        if isinstance(stop.code, str):  # what the interpreter prints for SystemExit("message")
            print(stop.code, file=sys.stderr)
    finally:
        os.chdir(old_cwd)
        sys.argv = old_argv
        for handler in [h for h in root.handlers if h not in handlers]:  # Hydra's job log handlers
            root.removeHandler(handler)
            handler.close()
    captured = capsys.readouterr()
    return CommandResult(code, captured.out, captured.err)


class CommandResult:
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


class LogLines:
    """``with LogLines("detector.engine.trainer") as lines:`` collects that logger's messages at ``level``
    and above (the package's loggers do not propagate to pytest's caplog once logging is configured)."""

    def __init__(self, name: str, level: str = "INFO") -> None:
        import logging

        collected: list[str] = []

        class Handler(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                collected.append(record.getMessage())

        self.logger, self.handler, self.level, self.messages = logging.getLogger(name), Handler(level), level, collected

    def __enter__(self) -> "LogLines":
        self._previous = self.logger.level
        self.logger.addHandler(self.handler)
        self.logger.setLevel(self.level)
        return self

    def __exit__(self, *exc) -> None:
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self._previous)
