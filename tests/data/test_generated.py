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
