"""Stage `ingest` without Prefect: every source format, every bad-input case, and the accounting."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tasks import schemas
from tasks.config import InputDataError, from_params
from tasks.ingest import stage
from tasks.ingest.config import IngestConfig
from tasks.ingest.images import check_images
from tests.conftest import TEST_DATA, params_with
from tests.images import write_image, write_truncated_jpeg

FLICKR_SAMPLE = TEST_DATA / "flickr30k_test_captions_sample.tsv"


def config(**data) -> IngestConfig:
    """params.yaml's `data` with these settings (demo: 30 images unless given)."""
    data.setdefault("demo", {"n_images": 30})
    return from_params(IngestConfig, params_with(data=data))


def run(tmp_path: Path, cfg: IngestConfig) -> stage.IngestResult:
    return stage.run(cfg, demo_image_dir=tmp_path / "out" / "demo_images",
                     captions_path=tmp_path / "out" / "captions.parquet",
                     triplets_path=tmp_path / "out" / "true_triplets.parquet",
                     report_path=tmp_path / "out" / "ingest.json")


def report(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "out" / "ingest.json").read_text())


def assert_accounted(result: stage.IngestResult) -> None:
    counts = result.report["captions"]
    assert counts["input"] == counts["kept"] + counts["dropped"]
    assert counts["dropped"] == counts["dropped_bad_caption"] + counts["dropped_bad_image"] + counts["dropped_over_limit"]
    assert counts["kept"] == len(result.captions)


def karpathy_file(path: Path, images: list[dict]) -> Path:
    path.write_text(json.dumps({"images": images, "dataset": "coco"}), encoding="utf-8")
    return path


def karpathy_image(filename: str, split: str, sentids: list[int], filepath: str | None = "val2014") -> dict:
    image = {"filename": filename, "split": split, "sentids": sentids,
             "sentences": [{"raw": f"A dog runs number {i} .", "sentid": i} for i in sentids]}
    if filepath:
        image["filepath"] = filepath
    return image


# ---------------------------------------------------------------- sources

def test_real_flickr30k_captions_as_a_table_are_split_by_image(tmp_path):
    frame = pd.read_csv(FLICKR_SAMPLE, sep="\t", quoting=3, dtype=str)
    for name in frame["image"].unique():
        write_image(tmp_path / "images" / name)
    result = run(tmp_path, config(source="table", annotations=str(FLICKR_SAMPLE), image_root=str(tmp_path / "images"),
                                  val_fraction=0.1, test_fraction=0.2, seed=3))

    captions = schemas.read(tmp_path / "out" / "captions.parquet", schemas.CAPTIONS)
    assert len(captions) == 500 and captions["image_id"].nunique() == 100
    assert captions.groupby("image_id")["split"].nunique().max() == 1  # no image straddles two splits
    images_per_split = captions.groupby("split")["image_id"].nunique().to_dict()
    assert images_per_split == {"train": 70, "val": 10, "test": 20}
    assert captions["caption"].tolist() == frame["caption"].str.strip().tolist()  # text kept, order kept
    assert captions["caption_id"].iloc[:2].tolist() == ["1007129816.jpg#0", "1007129816.jpg#1"]
    assert captions["image_path"].iloc[0] == str(tmp_path / "images" / "1007129816.jpg")
    assert result.report["captions_per_image"] == {"5": 100}
    assert result.report["problems"] == []
    assert_accounted(result)

    again = run(tmp_path, config(source="table", annotations=str(FLICKR_SAMPLE), image_root=str(tmp_path / "images"),
                                 val_fraction=0.1, test_fraction=0.2, seed=3))
    assert again.captions["split"].tolist() == captions["split"].tolist()  # seeded


def test_karpathy_json_streams_and_maps_restval_to_train(tmp_path):
    images = [karpathy_image("a.jpg", "train", [1, 2]), karpathy_image("b.jpg", "restval", [3]),
              karpathy_image("c.jpg", "val", [4]), karpathy_image("d.jpg", "test", [5, 6])]
    for image in images:
        write_image(tmp_path / "coco" / "val2014" / image["filename"])
    annotations = karpathy_file(tmp_path / "dataset_coco.json", images)
    result = run(tmp_path, config(source="karpathy", annotations=str(annotations), image_root=str(tmp_path / "coco")))

    captions = result.captions
    assert captions["caption_id"].tolist() == ["1", "2", "3", "4", "5", "6"]
    assert captions["split"].tolist() == ["train", "train", "train", "val", "test", "test"]
    assert captions["image_id"].iloc[0] == "val2014/a.jpg"
    assert captions["caption"].iloc[0] == "A dog runs number 1 ."
    assert result.report["splits"]["train"] == {"images": 2, "captions": 3}
    assert result.report["annotations"]["sha256"]
    assert_accounted(result)


def test_lamp_txt_takes_the_split_from_params(tmp_path):
    for name in ("x.jpg", "y.jpg"):
        write_image(tmp_path / "img" / name)
    annotations = tmp_path / "test.txt"
    annotations.write_text("0*x.jpg*a man rides a horse\n1*x.jpg*a person on a horse\n2*y.jpg*two dogs play * fight\n")
    result = run(tmp_path, config(source="lamp_txt", annotations=str(annotations), image_root=str(tmp_path / "img"),
                                  split="val"))
    assert result.captions["caption_id"].tolist() == ["0", "1", "2"]
    assert result.captions["caption"].iloc[2] == "two dogs play * fight"  # only the first two '*' separate
    assert set(result.captions["split"]) == {"val"}


AUTHORS_IMAGES = "/media/sdb/tmx/share_data/VSRN_data/f30k_precomp/f30k_images"  # the official list's own paths


def test_official_lamp_paths_are_re_rooted_under_image_root_by_file_name(tmp_path):
    """The official LAMP test list names images under its authors' folders, which exist on no other machine."""
    sample = pd.read_csv(FLICKR_SAMPLE, sep="\t", quoting=3, dtype=str).iloc[:50]  # 10 images, 5 captions each
    lines = [f"{125 + index}*{AUTHORS_IMAGES}/{image}*{caption}"
             for index, (image, caption) in enumerate(zip(sample["image"], sample["caption"]))]
    annotations = tmp_path / "test_f30k.txt"
    annotations.write_text("\n".join(lines) + "\n")
    names = sample["image"].unique()
    for name in names:
        write_image(tmp_path / "flickr30k-images" / name)
    assert not Path(AUTHORS_IMAGES).exists()

    result = run(tmp_path, config(source="lamp_txt", annotations=str(annotations),
                                  image_root=str(tmp_path / "flickr30k-images")))
    assert result.captions["image_path"].unique().tolist() == [str(tmp_path / "flickr30k-images" / n) for n in names]
    assert result.captions["caption_id"].tolist() == [str(125 + i) for i in range(50)]
    assert result.report["images"] == {"input": 10, "kept": 10, "bad": 0, "re_rooted": 10}
    assert_accounted(result)

    (tmp_path / "flickr30k-images" / names[3]).unlink()  # found neither as written nor under image_root
    with pytest.raises(InputDataError, match=f"{AUTHORS_IMAGES}/{names[3]}: missing"):
        run(tmp_path, config(source="lamp_txt", annotations=str(annotations),
                             image_root=str(tmp_path / "flickr30k-images")))
    assert report(tmp_path)["images"] == {"input": 10, "kept": 9, "bad": 1, "re_rooted": 9}


def test_karpathy_and_table_paths_are_re_rooted_by_their_folder_structure_first(tmp_path):
    """COCO's `val2014/COCO_val2014_x.jpg` under the local COCO folder, else the file name alone."""
    coco = tmp_path / "coco"
    write_image(coco / "val2014" / "COCO_val2014_1.jpg")
    write_image(coco / "COCO_val2014_1.jpg", colour=(0, 0, 0))  # a same-named decoy: the longer match wins
    write_image(coco / "COCO_val2014_2.jpg")  # only by file name: a flat image folder
    table = tmp_path / "captions.csv"
    pd.DataFrame({"image": ["/home/someone/coco/val2014/COCO_val2014_1.jpg", "/home/someone/coco/val2014/COCO_val2014_2.jpg"],
                  "caption": ["a dog", "a cat"], "split": ["test", "test"]}).to_csv(table, index=False)
    result = run(tmp_path, config(source="table", annotations=str(table), image_root=str(coco)))
    assert result.captions["image_path"].tolist() == [str(coco / "val2014" / "COCO_val2014_1.jpg"),
                                                      str(coco / "COCO_val2014_2.jpg")]
    assert result.report["images"]["re_rooted"] == 2

    annotations = karpathy_file(tmp_path / "dataset_coco.json", [karpathy_image("COCO_val2014_2.jpg", "test", [1])])
    result = run(tmp_path, config(source="karpathy", annotations=str(annotations), image_root=str(coco)))
    assert result.captions["image_path"].tolist() == [str(coco / "COCO_val2014_2.jpg")]  # not in coco/val2014/
    assert result.report["images"]["re_rooted"] == 1


def test_paths_that_exist_are_not_re_rooted(tmp_path):
    write_image(tmp_path / "here" / "a.jpg")
    write_image(tmp_path / "root" / "a.jpg")
    table = tmp_path / "captions.tsv"
    table.write_text(f"image\tcaption\tsplit\n{tmp_path / 'here' / 'a.jpg'}\ta dog\ttest\n")
    result = run(tmp_path, config(source="table", annotations=str(table), image_root=str(tmp_path / "root")))
    assert result.captions["image_path"].tolist() == [str(tmp_path / "here" / "a.jpg")]
    assert result.report["images"]["re_rooted"] == 0


# ---------------------------------------------------------------- captions per image

def coco_like_karpathy(tmp_path: Path) -> Path:
    """Karpathy COCO gives some images 6 or 7 sentences; here 7, 5 and 3 in test and 6 in train."""
    images = [karpathy_image("t7.jpg", "test", list(range(7))), karpathy_image("t5.jpg", "test", list(range(10, 15))),
              karpathy_image("t3.jpg", "test", list(range(20, 23))), karpathy_image("r6.jpg", "restval", list(range(30, 36)))]
    for image in images:
        write_image(tmp_path / "coco" / "val2014" / image["filename"])
    return karpathy_file(tmp_path / "dataset_coco.json", images)


def test_the_first_five_captions_per_image_are_kept_and_the_rest_counted_per_split(tmp_path):
    annotations = coco_like_karpathy(tmp_path)
    result = run(tmp_path, config(source="karpathy", annotations=str(annotations), image_root=str(tmp_path / "coco")))
    assert result.captions["caption_id"].tolist() == \
        [str(i) for i in [0, 1, 2, 3, 4, 10, 11, 12, 13, 14, 20, 21, 22, 30, 31, 32, 33, 34]]  # file order
    assert result.report["captions"]["dropped_over_limit"] == 3
    assert result.report["caption_limit"] == {
        "captions_per_image": 5,
        "splits": {"test": {"dropped": 2, "images_over": 1, "images_under": 1},
                   "train": {"dropped": 1, "images_over": 1, "images_under": 0}},
        "dropped_caption_ids": ["5", "6", "35"]}
    assert result.report["captions_per_image"] == {"3": 1, "5": 3}
    assert result.report["problems"] == []  # the protocol, not a problem: nothing fails
    assert_accounted(result)


def test_captions_per_image_null_keeps_every_caption(tmp_path):
    annotations = coco_like_karpathy(tmp_path)
    result = run(tmp_path, config(source="karpathy", annotations=str(annotations), image_root=str(tmp_path / "coco"),
                                  captions_per_image=None))
    assert len(result.captions) == 21 and result.report["captions"]["dropped_over_limit"] == 0
    assert result.report["caption_limit"]["captions_per_image"] is None
    assert_accounted(result)


@pytest.mark.parametrize("source", ["table", "lamp_txt"])
def test_the_caption_limit_applies_to_tables_and_lamp_lists(tmp_path, source):
    write_image(tmp_path / "a.jpg")
    write_image(tmp_path / "b.jpg")
    rows = [("a.jpg", f"a dog number {i}") for i in range(7)] + [("b.jpg", "a cat")]
    if source == "table":
        annotations = tmp_path / "captions.tsv"
        annotations.write_text("image\tcaption\tsplit\n" + "".join(f"{image}\t{text}\ttest\n" for image, text in rows))
    else:
        annotations = tmp_path / "test.txt"
        annotations.write_text("".join(f"{i}*{image}*{text}\n" for i, (image, text) in enumerate(rows)))
    result = run(tmp_path, config(source=source, annotations=str(annotations), captions_per_image=2))
    assert result.captions["caption"].tolist() == ["a dog number 0", "a dog number 1", "a cat"]
    assert result.report["caption_limit"]["splits"] == {"test": {"dropped": 5, "images_over": 1, "images_under": 1}}
    assert_accounted(result)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_table_formats_with_split_and_ids(tmp_path, suffix):
    rows = pd.DataFrame({"image": ["p.png", "p.png", "q.png"], "caption": ["one, two", "three", "four"],
                         "split": ["train", "train", "test"], "caption_id": ["c1", "c2", "c3"]})
    for name in ("p.png", "q.png"):
        write_image(tmp_path / name, image_format="PNG")
    annotations = tmp_path / f"captions{suffix}"
    if suffix == ".csv":
        rows.to_csv(annotations, index=False)
    elif suffix == ".jsonl":
        rows.to_json(annotations, orient="records", lines=True)
    else:
        rows.to_parquet(annotations)
    result = run(tmp_path, config(source="table", annotations=str(annotations), image_root=str(tmp_path)))
    assert result.captions[["caption_id", "caption", "split"]].values.tolist() == \
        [["c1", "one, two", "train"], ["c2", "three", "train"], ["c3", "four", "test"]]


def test_demo_source_writes_captions_images_and_true_triplets(tmp_path):
    result = run(tmp_path, config(source="demo", demo={"n_images": 30, "image_size": 64}))
    out = tmp_path / "out"
    captions = schemas.read(out / "captions.parquet", schemas.CAPTIONS)
    triplets = schemas.read(out / "true_triplets.parquet", schemas.TRUE_TRIPLETS)
    assert len(captions) == 150 and set(captions["split"]) == {"train", "val", "test"}
    assert sorted(triplets["caption_id"]) == sorted(captions["caption_id"])
    assert len(list((out / "demo_images").glob("*.png"))) == 30
    assert result.report["captions_per_image"] == {"5": 30}


# ---------------------------------------------------------------- bad images

def bad_image_table(tmp_path: Path) -> Path:
    write_image(tmp_path / "img" / "good.jpg")
    (tmp_path / "img" / "garbage.jpg").write_bytes(b"this is not an image")
    write_truncated_jpeg(tmp_path / "img" / "truncated.jpg")
    write_image(tmp_path / "img" / "tiny.jpg", size=(20, 200))
    annotations = tmp_path / "captions.tsv"
    annotations.write_text("image\tcaption\tsplit\n" + "".join(
        f"{name}.jpg\ta caption of {name}\ttest\n" for name in ("good", "garbage", "truncated", "tiny", "missing", "good")))
    return annotations


def test_bad_images_fail_the_stage_naming_each_file_and_reason(tmp_path):
    annotations = bad_image_table(tmp_path)
    with pytest.raises(InputDataError) as failure:
        run(tmp_path, config(source="table", annotations=str(annotations), image_root=str(tmp_path / "img")))
    message = str(failure.value)
    assert "\n" not in message
    assert "2 image: undecodable" in message  # counted by kind
    for name, reason in (("missing.jpg", "missing"), ("garbage.jpg", "undecodable"),
                         ("truncated.jpg", "undecodable"), ("tiny.jpg", "too small (20x200 px")):
        assert f"{tmp_path / 'img' / name}: {reason}" in message
    assert "good.jpg" not in message
    assert "data.on_bad_image" in message
    assert report(tmp_path)["failure"] == message
    assert not (tmp_path / "out" / "captions.parquet").exists()


def test_bad_images_skipped_are_listed_and_accounted(tmp_path):
    annotations = bad_image_table(tmp_path)
    result = run(tmp_path, config(source="table", annotations=str(annotations), image_root=str(tmp_path / "img"),
                                  on_bad_image="skip"))
    assert result.captions["image_id"].tolist() == ["good.jpg", "good.jpg"]
    listed = {Path(p["file"]).name: p["reason"] for p in report(tmp_path)["problems"]}
    assert set(listed) == {"garbage.jpg", "truncated.jpg", "tiny.jpg", "missing.jpg"}
    assert result.report["problem_counts"] == {"image: missing": 1, "image: too small": 1, "image: undecodable": 2}
    assert result.report["captions"]["dropped_bad_image"] == 4
    assert_accounted(result)


# ---------------------------------------------------------------- bad captions

def test_bad_captions_fail_naming_file_row_and_reason(tmp_path):
    for name in ("a.jpg", "b.jpg"):
        write_image(tmp_path / name)
    annotations = tmp_path / "test.txt"
    annotations.write_bytes(b"0*a.jpg*a dog runs\n1*a.jpg*   \n0*b.jpg*a cat sleeps\n2*b.jpg*caf\xe9 au lait\n"
                            b"no separators here\n3*b.jpg*a cat\n")
    with pytest.raises(InputDataError) as failure:
        run(tmp_path, config(source="lamp_txt", annotations=str(annotations), image_root=str(tmp_path)))
    message = str(failure.value)
    assert f"{annotations} line 2: empty or whitespace-only caption" in message
    assert f"{annotations} line 3: duplicate caption_id '0'" in message
    assert f"{annotations} line 4: not valid UTF-8" in message
    assert f"{annotations} line 5: expected 'idx*image_path*caption'" in message
    assert "data.on_bad_caption" in message


def test_bad_captions_skipped_keep_the_rest_and_account_for_every_row(tmp_path):
    for name in ("a.jpg", "b.jpg"):
        write_image(tmp_path / name)
    annotations = tmp_path / "captions.tsv"
    annotations.write_bytes(b"image\tcaption\tsplit\na.jpg\ta dog runs\ttrain\na.jpg\t \ttrain\n"
                            b"b.jpg\tna\xefve\ttest\nb.jpg\ta cat\tholdout\nb.jpg\ta cat sleeps\ttest\n")
    result = run(tmp_path, config(source="table", annotations=str(annotations), image_root=str(tmp_path),
                                  on_bad_caption="skip"))
    assert result.captions["caption"].tolist() == ["a dog runs", "a cat sleeps"]
    problems = {p["row"]: p["reason"] for p in result.report["problems"]}
    assert problems["line 3"] == "empty or whitespace-only caption"
    assert problems["line 4"].startswith("not valid UTF-8")
    assert problems["line 5"].startswith("unknown split 'holdout'")
    assert result.report["captions"] == {"input": 5, "kept": 2, "dropped": 3, "dropped_bad_caption": 3,
                                         "dropped_bad_image": 0, "dropped_over_limit": 0}
    assert_accounted(result)


def test_jsonl_rows_without_a_split_are_not_silently_resplit(tmp_path):
    write_image(tmp_path / "a.jpg")
    annotations = tmp_path / "captions.jsonl"
    annotations.write_text('{"image": "a.jpg", "caption": "a dog", "split": "test"}\n'
                           '{"image": "a.jpg", "caption": "a cat"}\nnot json\n')
    with pytest.raises(InputDataError) as failure:
        run(tmp_path, config(source="table", annotations=str(annotations)))
    assert f"{annotations} line 2: missing split" in str(failure.value)
    assert f"{annotations} line 3: not a JSON object" in str(failure.value)


def test_non_utf8_bytes_inside_karpathy_json_name_the_caption(tmp_path):
    write_image(tmp_path / "val2014" / "a.jpg")
    annotations = karpathy_file(tmp_path / "dataset.json", [karpathy_image("a.jpg", "test", [7, 8])])
    annotations.write_bytes(annotations.read_bytes().replace(b"number 8", b"n\xffmber 8"))
    result = run(tmp_path, config(source="karpathy", annotations=str(annotations), image_root=str(tmp_path),
                                  on_bad_caption="skip"))
    assert result.captions["caption_id"].tolist() == ["7"]
    [problem] = result.report["problems"]
    assert problem == {"kind": "caption", "file": str(annotations), "row": "image index 0", "caption_id": "8",
                       "reason": "not valid UTF-8"}


def test_karpathy_image_without_filename_accounts_for_each_caption(tmp_path):
    write_image(tmp_path / "val2014" / "a.jpg")
    nameless = karpathy_image("", "test", [3, 4])
    annotations = karpathy_file(tmp_path / "dataset.json", [karpathy_image("a.jpg", "test", [1, 2]), nameless])
    result = run(tmp_path, config(source="karpathy", annotations=str(annotations), on_bad_caption="skip"))
    assert [(p["caption_id"], p["reason"]) for p in result.report["problems"]] == \
        [("3", "image entry without filename"), ("4", "image entry without filename")]
    assert result.report["captions"]["input"] == 4
    assert_accounted(result)


def test_duplicate_karpathy_sentids_are_reported(tmp_path):
    write_image(tmp_path / "val2014" / "a.jpg")
    write_image(tmp_path / "val2014" / "b.jpg")
    annotations = karpathy_file(tmp_path / "dataset.json",
                                [karpathy_image("a.jpg", "test", [1, 2]), karpathy_image("b.jpg", "test", [2])])
    with pytest.raises(InputDataError, match=r"image index 1: duplicate caption_id '2'"):
        run(tmp_path, config(source="karpathy", annotations=str(annotations), image_root=str(tmp_path)))


def test_malformed_json_is_one_clear_error(tmp_path):
    annotations = tmp_path / "dataset.json"
    annotations.write_text('{"images": [{"filename": "a.jpg", ')
    with pytest.raises(InputDataError, match=rf"{annotations}: not a valid Karpathy JSON file"):
        run(tmp_path, config(source="karpathy", annotations=str(annotations)))


def test_table_without_required_columns(tmp_path):
    annotations = tmp_path / "captions.csv"
    annotations.write_text("img,text\na.jpg,hello\n")
    with pytest.raises(InputDataError, match=r"missing column\(s\) \['caption', 'image'\]; found \['img', 'text'\]"):
        run(tmp_path, config(source="table", annotations=str(annotations)))


# ---------------------------------------------------------------- params

@pytest.mark.parametrize("data, expected", [
    ({"source": "flickr"}, "params.yaml: data.source: 'flickr' is not one of demo, karpathy, table, lamp_txt"),
    ({"source": "karpathy"}, "params.yaml: data.annotations: required for source 'karpathy'"),
    ({"source": "karpathy", "annotations": "/nonexistent/dataset.json"},
     "params.yaml: data.annotations: /nonexistent/dataset.json: file not found"),
    ({"source": "table", "annotations": "params.yaml"}, "params.yaml: data.annotations: params.yaml: unknown table format"),
    ({"source": "table", "annotations": str(FLICKR_SAMPLE), "image_root": "/nonexistent/images"},
     "params.yaml: data.image_root: /nonexistent/images: directory not found"),
    ({"on_bad_image": "ignore"}, "params.yaml: data.on_bad_image: 'ignore' is not one of fail, skip"),
    ({"split": "holdout"}, "params.yaml: data.split: 'holdout' is not one of train, restval, val, test"),
    ({"test_fraction": 0.6, "val_fraction": 0.5},
     "params.yaml: data.val_fraction/test_fraction: each must be >= 0 and together < 1"),
    ({"val_fraction": -0.1}, "params.yaml: data.val_fraction: must be >= 0, got -0.1"),
    ({"sorce": "demo"}, "data: unknown keys ['sorce']; allowed: ['annotations', 'captions_per_image', 'demo', "),
    ({"captions_per_image": 0}, "params.yaml: data.captions_per_image: must be >= 1, got 0"),
    ({"captions_per_image": "5"}, "params.yaml: data.captions_per_image: must be an integer, got '5' (str)"),
    ({"min_image_side": 0}, "params.yaml: data.min_image_side: must be >= 1, got 0"),
    ({"min_image_side": 32.5}, "params.yaml: data.min_image_side: must be an integer, got 32.5 (float)"),
    ({"test_fraction": "0.1"}, "params.yaml: data.test_fraction: must be a number, got '0.1' (str)"),
    ({"seed": -1}, "params.yaml: data.seed: must be >= 0, got -1"),
    ({"seed": None}, "params.yaml: data.seed: must be set (null is not allowed here)"),
    ({"workers": -2}, "params.yaml: data.workers: must be >= 0, got -2"),
    ({"on_bad_caption": True}, "params.yaml: data.on_bad_caption: must be a non-empty string, got True (bool)"),
    ({"annotations": ""}, "params.yaml: data.annotations: must be a non-empty string, got '' (str)"),
    ({"demo": {"n_images": 1}}, "params.yaml: data.demo.n_images: must be >= 4, got 1"),
    ({"demo": {"image_size": 16}}, "params.yaml: data.demo.image_size: must be >= 32, got 16"),
    ({"demo": {"image_size": 512}}, "params.yaml: data.demo.image_size: must be <= 256, got 512"),
    ({"demo": {"images": 8}}, "params.yaml: data.demo: unknown keys ['images']"),
    ({"demo": "small"}, "params.yaml: data.demo: must be a mapping of settings, got 'small' (str)"),
    ({"demo": {"passive_voice": "no"}}, "params.yaml: data.demo.passive_voice: must be true or false, got 'no' (str)"),
    ({"demo": {"splits": {"holdout": 0.0}}},  # merged into params.yaml's splits
     "params.yaml: data.demo.splits: need exactly the keys ['train', 'val', 'test'], got ['holdout', 'test', 'train', 'val']"),
    ({"demo": {"splits": {"train": 0.8, "val": 0.3, "test": -0.1}}},
     "params.yaml: data.demo.splits: must be finite and non-negative"),
    ({"demo": {"splits": {"train": 0.7, "val": 0.1, "test": 0.1}}}, "params.yaml: data.demo.splits: must sum to 1"),
    ({"demo": {"splits": {"train": "most", "val": 0.1, "test": 0.1}}},
     "params.yaml: data.demo.splits.train: must be a number, got 'most' (str)"),
    ({"demo": {"n_images": 8, "colour_cast": [1.0, 0.8]}},
     "params.yaml: data.demo.colour_cast: must be three gains (red, green, blue) between 0 and 2.0, got [1.0, 0.8]"),
    ({"demo": {"colour_cast": [1.0, 0.8, -0.1]}}, "params.yaml: data.demo.colour_cast: must be three gains"),
    ({"demo": {"colour_cast": [1.0, float("nan"), 0.5]}}, "params.yaml: data.demo.colour_cast: must be three gains"),
    ({"demo": {"colour_cast": "warm"}}, "params.yaml: data.demo.colour_cast: must be a list, got 'warm' (str)"),
    ({"demo": {"colour_cast": [1.0, "red", 0.5]}},
     "params.yaml: data.demo.colour_cast[1]: must be a number, got 'red' (str)"),
])
def test_bad_params_are_named(data, expected):
    with pytest.raises(InputDataError) as failure:
        config(**data)
    assert expected in str(failure.value)
    assert str(failure.value).startswith("params.yaml: data") and "\n" not in str(failure.value)


@pytest.mark.parametrize("section, key", [("data", "min_image_side"), ("data", "demo"), ("demo", "colour_cast")])
def test_a_missing_setting_is_named(section, key):
    params = params_with()
    (params["data"] if section == "data" else params["data"]["demo"]).pop(key)
    where = "data" if section == "data" else "data.demo"
    with pytest.raises(InputDataError) as failure:
        from_params(IngestConfig, params)
    assert str(failure.value) == f"params.yaml: {where}: missing keys ['{key}'] (params.yaml lists every setting)"


def test_a_missing_data_section_is_named():
    params = params_with()
    del params["data"]
    with pytest.raises(InputDataError) as failure:
        from_params(IngestConfig, params)
    assert str(failure.value) == "params.yaml: data: must be a mapping of settings, got null"


def test_params_yaml_as_it_is_and_image_root_beside_the_annotations(tmp_path):
    assert from_params(IngestConfig, params_with()).demo.colour_cast == (1.0, 0.8, 0.55)  # a tuple, as typed
    annotations = tmp_path / "lists" / "test.txt"
    annotations.parent.mkdir()
    annotations.write_text("0*a.jpg*a dog\n")
    cfg = config(source="lamp_txt", annotations=str(annotations))
    assert cfg.annotations == annotations and cfg.image_root == annotations.parent
    assert config(source="lamp_txt", annotations=str(annotations), image_root=str(tmp_path)).image_root == tmp_path


def test_check_images_reports_only_bad_ones(tmp_path):
    good = write_image(tmp_path / "good.png", image_format="PNG")
    verdicts = check_images([str(good), str(good), str(tmp_path / "nope.png")], min_side=32, workers=2)
    assert verdicts == {str(tmp_path / "nope.png"): "missing"}
