"""datasets/download.py without the network: local archives it checks, resumes, unpacks and lays out."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import tarfile
import zipfile

import pytest

from conftest import ROOT

spec = importlib.util.spec_from_file_location("download", ROOT / "datasets" / "download.py")
download = importlib.util.module_from_spec(spec)
spec.loader.exec_module(download)


def make_tar(path, members: dict[str, bytes]):
    with tarfile.open(path, "w") as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_voc_layout_from_local_archives_then_nothing_to_do(tmp_path, monkeypatch, capsys):
    trainval = make_tar(tmp_path / "tv.tar", {"VOCdevkit/VOC2007/ImageSets/Main/trainval.txt": b"000001\n",
                                               "VOCdevkit/VOC2007/Annotations/000001.xml": b"<annotation/>"})
    test = make_tar(tmp_path / "te.tar", {"VOCdevkit/VOC2007/ImageSets/Main/test.txt": b"000002\n"})
    urls = ["http://example.invalid/VOCtrainval_06-Nov-2007.tar", "http://example.invalid/VOCtest_06-Nov-2007.tar"]
    monkeypatch.setitem(download.DATASETS, "voc2007", ([(urls[0], trainval), (urls[1], test)], ".",
                        ["VOCdevkit/VOC2007/ImageSets/Main/trainval.txt", "VOCdevkit/VOC2007/ImageSets/Main/test.txt"]))
    local = {urls[0]: (tmp_path / "tv.tar").as_uri(), urls[1]: (tmp_path / "te.tar").as_uri()}
    out = tmp_path / "datasets"
    download.install("voc2007", out, urls=local)
    assert (out / "VOCdevkit/VOC2007/ImageSets/Main/test.txt").read_text() == "000002\n"
    assert not list((out / "archives").iterdir())  # archives removed after unpacking
    download.install("voc2007", out, urls=local)
    assert "already complete" in capsys.readouterr().out


def test_md5_mismatch_removes_the_partial_file(tmp_path):
    (tmp_path / "a.zip").write_bytes(b"corrupt")
    with pytest.raises(download.DownloadError, match="MD5 mismatch"):
        download.fetch((tmp_path / "a.zip").as_uri(), tmp_path / "out.zip", "0" * 32)
    assert not (tmp_path / "out.zip.part").exists()


def test_resume_asks_for_the_rest_and_appends(tmp_path, monkeypatch):
    data = b"0123456789" * 100
    (tmp_path / "x.zip.part").write_bytes(data[:300])
    seen = {}

    class Response(io.BytesIO):
        status = 206

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

    def fake_urlopen(request, timeout):
        seen["range"] = request.get_header("Range")
        start = int(seen["range"].split("=")[1].rstrip("-"))
        return Response(data[start:])

    monkeypatch.setattr(download.urllib.request, "urlopen", fake_urlopen)
    got = download.fetch("http://example.invalid/x.zip", tmp_path / "x.zip", hashlib.md5(data).hexdigest())
    assert seen["range"] == "bytes=300-" and got.read_bytes() == data


def test_members_outside_the_target_are_refused(tmp_path):
    make_tar(tmp_path / "evil.tar", {"../escape.txt": b"x"})
    with pytest.raises(download.DownloadError, match="would land outside"):
        download.unpack(tmp_path / "evil.tar", tmp_path / "into")
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as z:
        z.writestr("../../escape.txt", "x")
    with pytest.raises(download.DownloadError, match="would land outside"):
        download.unpack(tmp_path / "evil.zip", tmp_path / "into")
    assert not (tmp_path / "escape.txt").exists()


def test_coco_zip_layout(tmp_path, monkeypatch):
    files = {"train2017.zip": {"train2017/a.jpg": b"j"}, "val2017.zip": {"val2017/b.jpg": b"j"},
             "annotations_trainval2017.zip": {"annotations/instances_train2017.json": b"{}",
                                              "annotations/instances_val2017.json": b"{}"}}
    archives, local = [], {}
    for name, members in files.items():
        with zipfile.ZipFile(tmp_path / name, "w") as z:
            for member, data in members.items():
                z.writestr(member, data)
        url = f"http://images.cocodataset.org/zips/{name}"
        archives.append((url, hashlib.md5((tmp_path / name).read_bytes()).hexdigest()))
        local[url] = (tmp_path / name).as_uri()
    _, folder, proofs = download.DATASETS["coco2017"]
    monkeypatch.setitem(download.DATASETS, "coco2017", (archives, folder, proofs))
    download.install("coco2017", tmp_path / "d", urls=local, keep_archives=True)
    assert (tmp_path / "d/coco/annotations/instances_val2017.json").is_file()
    assert (tmp_path / "d/coco/train2017/a.jpg").is_file() and len(list((tmp_path / "d/archives").iterdir())) == 3
