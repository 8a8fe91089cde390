"""Training augmentation: crops drawn from the batch's generator, whatever the threads; boxes inside the image."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tasks.config import InputDataError
from tasks.train.augment import Augmentation, AugmentedPrefixes, CropDraw
from tests.images import write_image, write_truncated_jpeg
from tests.test_model import tiny_model


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("augment")
    paths = [str(write_image(root / f"{i}.png", size=(80 - 10 * i, 60), image_format="PNG")) for i in range(3)]
    gradient = np.linspace(0, 255, 80 * 60 * 3).reshape(60, 80, 3).astype(np.uint8)  # every crop looks different
    Image.fromarray(gradient).save(paths[0])
    return paths


def test_boxes_stay_inside_the_image_and_cover_the_drawn_area():
    rng = np.random.default_rng(0)
    for draw in CropDraw.sample(500, (0.08, 1.0), rng):
        for width, height in ((64, 64), (640, 480), (37, 300)):
            top, left, crop_height, crop_width = draw.box(width, height)
            assert 0 <= top <= height - crop_height and 0 <= left <= width - crop_width
            assert 1 <= crop_width <= width and 1 <= crop_height <= height
            if crop_width < width and crop_height < height:  # not clipped: the drawn share of the area
                assert crop_width * crop_height == pytest.approx(draw.area * width * height, rel=0.1, abs=4)
    assert {draw.flip for draw in CropDraw.sample(50, (0.5, 1.0), rng)} == {True, False}


def test_the_batch_generator_fixes_every_crop_whatever_the_threads(pictures):
    clip = tiny_model().clip
    serial, threaded = Augmentation(clip, (0.2, 1.0), workers=0), Augmentation(clip, (0.2, 1.0), workers=3)
    first = serial.images(pictures, np.random.default_rng([0, 1, 2]))
    assert first.shape == (3, 3, 32, 32)
    assert torch.equal(threaded.images(pictures, np.random.default_rng([0, 1, 2])), first)
    assert not torch.equal(serial.images(pictures, np.random.default_rng([0, 1, 3])), first)


def test_augmented_prefixes_crop_each_distinct_image_once(pictures):
    model = tiny_model(injection_layer=2).eval()
    source = AugmentedPrefixes(model, pictures, Augmentation(model.clip, (0.5, 1.0), workers=0), torch.device("cpu"))
    with pytest.raises(RuntimeError, match="drawing_from"):
        source.prefix(np.array([0]))
    with torch.no_grad():
        prefix = source.drawing_from(np.random.default_rng(0)).prefix(np.array([2, 0, 2]))
        again = source.drawing_from(np.random.default_rng(0)).prefix(np.array([2, 0, 2]))
    assert torch.equal(prefix.tokens[0], prefix.tokens[2]) and not torch.equal(prefix.tokens[0], prefix.tokens[1])
    assert torch.equal(prefix.tokens, again.tokens)


def test_an_image_that_does_not_decode_is_named(pictures, tmp_path):
    broken = str(write_truncated_jpeg(tmp_path / "broken.jpg"))
    with pytest.raises(InputDataError, match="broken.jpg: cannot decode image"):
        Augmentation(tiny_model().clip, (0.5, 1.0), workers=2).images([pictures[0], broken], np.random.default_rng(0))
