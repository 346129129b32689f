"""``roilens <command> --help``: what the command does, its keys with the configs' own comments, examples.

Hydra's own ``--help`` prints a generic text and the whole composed config (every group, comments
lost). Here the text comes from the two places that already say it: the command module's docstring
(what it does, its examples) and the command's YAML file (each top-level key with the comment beside
it, and the config groups it composes with their options). ``--hydra-help`` still prints Hydra's.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

HELP_FLAGS = ("-h", "--help")
_KEY = re.compile(r"^([A-Za-z_][\w]*):\s*(.*?)\s*(?:#\s?(.*))?$")
_GROUP = re.compile(r"^\s*-\s*(?:override\s+)?([\w/]+):\s*([\w.-]+|null)\s*(?:#\s?(.*))?$")


def wants_help(argv: Sequence[str]) -> bool:
    return any(a in HELP_FLAGS for a in argv)


def _usage_text(doc: str, command: str) -> str:
    """The docstring with ``python tools/<x>.py`` written as the console command."""
    return re.sub(r"python tools/\w+\.py", f"roilens {command}", doc.strip())


def _options(config_dir: Path, group: str) -> list[str]:
    folder = config_dir / group
    return sorted(p.stem for p in folder.glob("*.yaml") if not p.stem.startswith("_")) if folder.is_dir() else []


def command_help(*, command: str, config_name: str | None, doc: str, config_dir: str | Path) -> str:
    """The help text of one command (``config_name`` None: an argparse command, docstring only)."""
    lines = [_usage_text(doc, command)]
    if config_name is None:
        return "\n".join(line.rstrip() for line in lines)
    config_dir = Path(config_dir)
    text = (config_dir / f"{config_name}.yaml").read_text().splitlines()
    groups, keys, section = [], [], None
    for line in text:
        if not line.strip() or line.lstrip().startswith("#") and not line.startswith(" "):
            continue
        if not line.startswith((" ", "-")):
            match = _KEY.match(line)
            section = match.group(1) if match else None
            if match and section not in ("defaults", "hydra"):
                value, comment = match.group(2), match.group(3) or ""
                keys.append((section, value, comment))
            continue
        if section == "defaults":
            match = _GROUP.match(line)
            if match and match.group(1) != "_self_":
                groups.append((match.group(1), match.group(2), match.group(3) or ""))
        elif section not in ("defaults", "hydra") and keys and line.strip().startswith("#"):
            # A comment continued on the next line, aligned under the first.
            name, value, comment = keys[-1]
            keys[-1] = (name, value, f"{comment} {line.strip()[1:].strip()}".strip())
    if groups:
        lines += ["", "config groups (group=option):"]
        for name, default, comment in groups:
            options = _options(config_dir, name)
            shown = f"default {default}" + (f"; {', '.join(options)}" if options else "")
            lines.append(f"  {name:<14} {shown}" + (f"  -- {comment}" if comment else ""))
            folder = config_dir / name
            for sub in sorted(d for d in folder.iterdir() if d.is_dir()) if folder.is_dir() else []:
                lines.append(f"  {name + '/' + sub.name:<14} {', '.join(_options(config_dir, f'{name}/{sub.name}'))}")
    if keys:
        lines += ["", "keys (key=value):"]
        width = max(len(k) for k, _, _ in keys)
        value_width = min(max(len(v) for _, v, _ in keys), 12)
        for name, value, comment in keys:
            lines.append(f"  {name:<{width}}  {value:<{value_width}}" + (f"  # {comment}" if comment else ""))
    lines += ["", f"Every key of the composed config: roilens {command} --cfg job   (Hydra's own help: --hydra-help)"]
    return "\n".join(line.rstrip() for line in lines)


def run_command(main: Callable[[], None], *, command: str, config_name: str, doc: str | None) -> None:
    """A Hydra command's entry point: its own ``--help``, else the resolvers, the argv check, ``main``."""
    from detector.cli.config import CONFIG_DIR, check_argv, register_resolvers

    if print_help_if_asked(command=command, config_name=config_name, doc=doc, config_dir=CONFIG_DIR):
        return
    register_resolvers()
    check_argv(sys.argv[1:])
    main()


def print_help_if_asked(*, command: str, config_name: str | None, doc: str | None, config_dir: str | Path) -> bool:
    """Print the command's help and return True when the command line asks for it."""
    if not wants_help(sys.argv[1:]):
        return False
    print(command_help(command=command, config_name=config_name, doc=doc or "", config_dir=config_dir))
    return True
