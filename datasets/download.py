"""Download and lay out Pascal VOC 2007/2012 and COCO 2017 under datasets/ (needs the internet).

    python datasets/download.py voc2007 voc2012        # -> datasets/VOCdevkit/VOC2007, VOC2012
    python datasets/download.py coco2017               # -> datasets/coco/{train2017,val2017,annotations}
    python datasets/download.py voc2007 --root /data --keep-archives

Archives are fetched from the official hosts, resumed where a previous attempt stopped (HTTP Range
requests into ``<archive>.part``), checked against the MD5 sums torchvision and the datasets' pages
publish, unpacked safely (no member may land outside the target folder), and deleted afterwards
unless ``--keep-archives``. A second run finds the layout complete and does nothing. Then:

    python tools/train.py dataset=voc                                   # VOC07+12 trainval, 07 test
    python tools/train.py dataset=coco_json dataset.train.images=datasets/coco/train2017 \\
        dataset.train.annotations=datasets/coco/annotations/instances_train2017.json \\
        dataset.val.images=datasets/coco/val2017 dataset.val.annotations=datasets/coco/annotations/instances_val2017.json

Standard library only (urllib, hashlib, tarfile, zipfile): it must run before anything else is set up.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent

# name -> (archives: (url, md5), folder unpacked into (relative to --root), files that prove it is complete)
DATASETS = {
    "voc2007": (
        [("http://host.robots.ox.ac.uk/pascal/VOC/voc2007/VOCtrainval_06-Nov-2007.tar", "c52e279531787c972589f7e41ab4ae64"),
         ("http://host.robots.ox.ac.uk/pascal/VOC/voc2007/VOCtest_06-Nov-2007.tar", "b6e924de25625d8de591ea690078ad9f")],
        ".", ["VOCdevkit/VOC2007/ImageSets/Main/trainval.txt", "VOCdevkit/VOC2007/ImageSets/Main/test.txt"],
    ),
    "voc2012": (
        [("http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar", "6cd6e144f989b92b3379bac3b3de84fd")],
        ".", ["VOCdevkit/VOC2012/ImageSets/Main/trainval.txt"],
    ),
    "coco2017": (
        [("http://images.cocodataset.org/zips/train2017.zip", "cced6f7f71b7629ddf16f17bbcfab6b2"),
         ("http://images.cocodataset.org/zips/val2017.zip", "442b8da7639aecaf257c1dceb8ba8c80"),
         ("http://images.cocodataset.org/annotations/annotations_trainval2017.zip", "f4bbac642086de4f52a3fdda2de5fa2c")],
        "coco", ["coco/annotations/instances_train2017.json", "coco/annotations/instances_val2017.json",
                 "coco/train2017", "coco/val2017"],
    ),
}
CHUNK = 1 << 20


class DownloadError(Exception):
    """One line for the user: what failed, and what to do."""


def md5sum(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(url: str, dest: Path, md5: str) -> Path:
    """Download ``url`` to ``dest`` (resuming ``dest.part``) and check its MD5."""
    if dest.is_file() and md5sum(dest) == md5:
        return dest
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            # 206: the server resumes; anything else sends the whole file again.
            resumed = getattr(response, "status", None) == 206
            with open(part, "ab" if resumed else "wb") as out:
                shutil.copyfileobj(response, out, CHUNK)
    except (urllib.error.URLError, OSError) as err:
        raise DownloadError(f"cannot download {url} ({err}); run again to resume from {part}") from None
    if md5sum(part) != md5:
        part.unlink()
        raise DownloadError(f"{url}: MD5 mismatch (expected {md5}); the partial file was removed, run again")
    part.replace(dest)
    return dest


def _inside(base: Path, name: str) -> bool:
    target = (base / name).resolve()
    return target == base.resolve() or base.resolve() in target.parents


def unpack(archive: Path, into: Path) -> None:
    """Unpack a .tar or .zip into ``into``, refusing members that would land outside it."""
    into.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            bad = [n for n in z.namelist() if not _inside(into, n)]
            if bad:
                raise DownloadError(f"{archive}: member {bad[0]!r} would land outside {into}; refused")
            z.extractall(into)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as t:
            bad = [m.name for m in t.getmembers() if not _inside(into, m.name) or m.issym() or m.islnk()]
            if bad:
                raise DownloadError(f"{archive}: member {bad[0]!r} is a link or would land outside {into}; refused")
            t.extractall(into, filter="data")
    else:
        raise DownloadError(f"{archive}: neither a tar nor a zip archive")


def install(name: str, root: Path, *, keep_archives: bool = False, urls: dict[str, str] | None = None) -> Path:
    """Download, check, unpack and lay out one dataset; returns its folder. ``urls`` overrides hosts (tests)."""
    archives, folder, proofs = DATASETS[name]
    target = root / folder
    if all((root / p).exists() for p in proofs):
        print(f"{name}: already complete under {target}")
        return target
    (root / "archives").mkdir(parents=True, exist_ok=True)
    for url, md5 in archives:
        source = (urls or {}).get(url, url)
        archive = fetch(source, root / "archives" / url.rsplit("/", 1)[-1], md5)
        print(f"{name}: unpacking {archive.name}")
        unpack(archive, target)
        if not keep_archives:
            archive.unlink()
    missing = [p for p in proofs if not (root / p).exists()]
    if missing:
        raise DownloadError(f"{name}: unpacked, but {root / missing[0]} is missing; the archive layout changed?")
    print(f"{name}: ready under {target}")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="+", choices=sorted(DATASETS))
    parser.add_argument("--root", type=Path, default=ROOT, help="where to lay them out (default: datasets/)")
    parser.add_argument("--keep-archives", action="store_true")
    args = parser.parse_args(argv)
    try:
        for name in args.names:
            install(name, args.root, keep_archives=args.keep_archives)
    except DownloadError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
