"""detector.data.generated: a generated split read as it is must be the split the config names."""

from __future__ import annotations

import functools

import pytest

from detector.data import ensure_synthetic_split
from detector.data.generated import generated_split
from detector.errors import DatasetError


def test_a_split_read_as_it_is_must_be_drawn_with_the_named_parameters(tmp_path):
    generator = functools.partial(ensure_synthetic_split, min_image_size=64, max_image_size=80, max_objects=2)
    generated_split(generator=generator, root=tmp_path, split="val", num_images=3, seed=2)  # drawn once
    read = functools.partial(generated_split, generator=generator, root=tmp_path, split="val", create=False)
    assert len(read(num_images=3, seed=2)) == 3
    # A later run drew the split again with fewer images (e.g. dataset.val.num_images=8): a checkpoint
    # whose config names the 3-image split must not be scored on another set without a word.
    with pytest.raises(DatasetError, match=r"drawn with num_images=3, not the num_images=5 the config names"):
        read(num_images=5, seed=2)
    with pytest.raises(DatasetError, match=r"seed=2, not the seed=7"):
        read(num_images=3, seed=7)
    # The generator's own keywords count too.
    other = functools.partial(ensure_synthetic_split, min_image_size=64, max_image_size=80, max_objects=4)
    with pytest.raises(DatasetError, match=r"max_objects=2, not the max_objects=4"):
        generated_split(generator=other, root=tmp_path, split="val", num_images=3, seed=2, create=False)
    # Reading never draws: the split on disk is unchanged.
    assert len(read(num_images=3, seed=2)) == 3


def test_the_check_compares_the_whole_record_defaults_included(tmp_path):
    # jpeg_quality is a default no config names: a split drawn with another one is another split.
    drawn = functools.partial(ensure_synthetic_split, min_image_size=64, max_image_size=80, jpeg_quality=80)
    generated_split(generator=drawn, root=tmp_path, split="val", num_images=2, seed=1)
    named = functools.partial(ensure_synthetic_split, min_image_size=64, max_image_size=80)
    with pytest.raises(DatasetError, match=r"drawn with jpeg_quality=80, not the jpeg_quality=95"):
        generated_split(generator=named, root=tmp_path, split="val", num_images=2, seed=1, create=False)
    assert len(generated_split(generator=drawn, root=tmp_path, split="val", num_images=2, seed=1, create=False)) == 2


def test_the_scenes_generator_is_checked_on_its_whole_record(tmp_path):
    from detector.data.scenes import ensure_scenes_split

    kw = dict(num_classes=2, min_image_size=64, max_image_size=72, max_objects=2, background="texture")
    generated_split(generator=functools.partial(ensure_scenes_split, **kw), root=tmp_path, split="val", num_images=2, seed=1)
    read = functools.partial(generated_split, root=tmp_path, split="val", num_images=2, seed=1, create=False)
    assert len(read(generator=functools.partial(ensure_scenes_split, **kw))) == 2
    # An int given where the record holds a float (imbalance 0 -> 0.0) is the same split.
    assert len(read(generator=functools.partial(ensure_scenes_split, **kw, imbalance=0))) == 2
    with pytest.raises(DatasetError, match=r"drawn with max_overlap=0.1, not the max_overlap=0.3"):
        read(generator=functools.partial(ensure_scenes_split, **kw, max_overlap=0.3))


def test_a_generator_without_a_record_function_is_checked_on_the_named_parameters(tmp_path):
    def mine(root, *, split, num_images, seed, size=64):  # a user's generator: no recorded_params
        return ensure_synthetic_split(root, split=split, num_images=num_images, seed=seed,
                                      min_image_size=size, max_image_size=size)

    generated_split(generator=mine, root=tmp_path, split="val", num_images=2, seed=1)
    assert len(generated_split(generator=mine, root=tmp_path, split="val", num_images=2, seed=1, create=False)) == 2
    with pytest.raises(DatasetError, match=r"drawn with num_images=2, not the num_images=3"):
        generated_split(generator=mine, root=tmp_path, split="val", num_images=3, seed=1, create=False)
