"""Zip archives read in place: the plan of a central directory, every bad member a row with its reason,
member names that point outside the archive, and ingest and scoring of zips giving exactly what the same
files on disk give."""

from __future__ import annotations

import io
import json
import struct
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from jobs import ingest as ingest_job
from jobs import score as score_job
from skinspark import schema
from skinspark.errors import ImageError
from skinspark.images import IMAGE_SUFFIXES, archives, read_file, read_files
from skinspark.preprocess import decode_image, decode_many
from skinspark.score import ERROR, ERROR_REASON, PATH, PREDICTED_DX, predict_udf
from tests.conftest import Killed, generated_dataset, kill_on_commit, tiny_model_dir

STORED, DEFLATED = zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED
DEFLATE64 = 9  # a method Python's zipfile cannot decompress
PROBS = list(schema.PROB_COLUMNS)
# Where the flag and method fields sit in a local file header and in a central directory entry.
LOCAL_FLAGS, LOCAL_METHOD, LOCAL_HEADER = 6, 8, 30
CENTRAL_FLAGS, CENTRAL_METHOD, CENTRAL_HEADER = 8, 10, 46


def _write_zip(path: Path, members) -> Path:
    """A zip of (name, bytes, method) members, in that order."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, data, method in members:
            info = zipfile.ZipInfo(name, date_time=(2018, 6, 1, 12, 0, 0))
            info.compress_type = method
            archive.writestr(info, data)
    return path


def _uri(path: Path) -> str:
    """A local path as Spark lists it."""
    return f"file:{path}"


def _offsets(data: bytes, name: str) -> tuple[int, int]:
    """(local header, central directory entry) offsets of the member `name` in a zip's bytes."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        local = archive.getinfo(name).header_offset
    start = 0
    while (central := data.find(b"PK\x01\x02", start)) >= 0:
        (length,) = struct.unpack_from("<H", data, central + 28)
        if data[central + CENTRAL_HEADER : central + CENTRAL_HEADER + length] == name.encode():
            return local, central
        start = central + 1
    raise AssertionError(f"no central directory entry for {name}")


def _patch_member(path: Path, name: str, flags: int | None = None, method: int | None = None) -> None:
    """Set a member's flag bits or compression method in both its local header and its central entry."""
    data = bytearray(path.read_bytes())
    local, central = _offsets(bytes(data), name)
    if flags is not None:
        struct.pack_into("<H", data, local + LOCAL_FLAGS, flags)
        struct.pack_into("<H", data, central + CENTRAL_FLAGS, flags)
    if method is not None:
        struct.pack_into("<H", data, local + LOCAL_METHOD, method)
        struct.pack_into("<H", data, central + CENTRAL_METHOD, method)
    path.write_bytes(bytes(data))


def _flip_data_byte(path: Path, name: str) -> None:
    """Flip one byte of a stored member's data: the central directory is intact, the CRC fails."""
    data = bytearray(path.read_bytes())
    local, _ = _offsets(bytes(data), name)
    name_length, extra_length = struct.unpack_from("<HH", data, local + 26)
    data[local + LOCAL_HEADER + name_length + extra_length + 100] ^= 0xFF
    path.write_bytes(bytes(data))


def _records(plan: archives.ArchivePlan) -> dict[str, dict]:
    """The plan's member rows by member name."""
    return {record[archives.MEMBER]: record for record in plan.members.to_dict("records")}


def _reason(value) -> str | None:
    return value.reason if isinstance(value, ImageError) else None


def _missing(value) -> bool:
    """A null of pandas (None, NaN or pd.NA)."""
    return value is None or bool(pd.isna(value))


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("generated")
    generated_dataset(root, images=20, seed=23, workers=1)
    return root


def _jpegs(root: Path) -> list[Path]:
    return sorted(root.rglob("*.jpg"), key=lambda path: path.name)


# --------------------------------------------------------------------------------------------------
# No Spark: planning and reading members


def test_plan_counts_every_entry_and_reads_members_byte_for_byte(generated, tmp_path):
    a, b, c, d = (path.read_bytes() for path in _jpegs(generated)[:4])
    png = io.BytesIO()
    Image.open(io.BytesIO(d)).save(png, "PNG")
    zipped = _write_zip(
        tmp_path / "mixed.zip",
        [
            ("ISIC_a.jpg", a, STORED),  # at the root, stored
            ("part/", b"", STORED),  # a folder entry: ignored
            ("part/ISIC_b.JPG", b, DEFLATED),  # in a folder, deflated, upper-case suffix
            ("part/deeper/ISIC_c.jpeg", c, DEFLATED),
            ("part/ISIC_d.png", png.getvalue(), STORED),
            ("__MACOSX/", b"", STORED),  # macOS metadata: skipped
            ("__MACOSX/part/._ISIC_b.JPG", b"\x00\x05\x16\x07apple double", DEFLATED),
            ("._ISIC_a.jpg", b"\x00\x05\x16\x07apple double", STORED),  # AppleDouble at the root
            ("part/README.txt", b"not an image", DEFLATED),  # not an image: ignored
        ],
    )
    uri = _uri(zipped)
    plan = archives.plan_archives([uri], IMAGE_SUFFIXES)
    names = ["ISIC_a.jpg", "part/ISIC_b.JPG", "part/deeper/ISIC_c.jpeg", "part/ISIC_d.png"]
    expected = [a, b, c, png.getvalue()]
    assert plan.counts == {uri: {"members": 9, "images": 4, "skipped": 3, "ignored": 2}}
    assert plan.totals() == {
        "archives": 1,
        "broken_archives": 0,
        "members": 9,
        "images": 4,
        "skipped": 3,
        "ignored": 2,
    }
    assert list(plan.members["path"]) == [f"{uri}!/{name}" for name in names]
    assert list(plan.members[archives.MEMBER]) == names
    assert list(plan.members["length"]) == [len(data) for data in expected]
    assert list(plan.members[archives.METHOD]) == [STORED, DEFLATED, DEFLATED, STORED]
    assert plan.members["reason"].map(_missing).all() and plan.broken.empty
    records = plan.members.to_dict("records")
    assert archives.read_members(records) == expected
    # Any order in, the same order out (each archive is read in offset order inside).
    assert archives.read_members(records[::-1]) == expected[::-1]
    # By path alone, as predict_udf gets them, mixed with a plain file.
    paths = [*plan.members["path"], str(_jpegs(generated)[5])]
    assert read_files(paths) == [*expected, _jpegs(generated)[5].read_bytes()]
    assert read_file(f"{uri}!/part/deeper/ISIC_c.jpeg") == c
    assert archives.split_member_path(f"{uri}!/part/ISIC_b.JPG") == (uri, "part/ISIC_b.JPG")
    assert archives.split_member_path(uri) is None
    # The decoded member is the decoded file.
    assert np.array_equal(
        decode_image(read_file(f"{uri}!/part/ISIC_b.JPG"), 75, 100), decode_image(b, 75, 100)
    )


class _Unseekable(io.RawIOBase):
    """A write-only stream, as a zip streamed over a network is written: its members carry data
    descriptors (sizes and CRC after the data, zeros in the local header)."""

    def __init__(self):
        self.written = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.written += data
        return len(data)


def test_a_streamed_zip64_archive_with_data_descriptors_and_utf8_names(generated, tmp_path):
    sources = _jpegs(generated)[:3]
    names = [f"läsion/{path.stem}-ü.jpg" for path in sources]
    stream = _Unseekable()
    with zipfile.ZipFile(stream, "w", DEFLATED) as archive:
        for name, path in zip(names, sources, strict=True):
            with archive.open(name, "w", force_zip64=True) as member:
                member.write(path.read_bytes())
    zipped = tmp_path / "streamed.zip"
    zipped.write_bytes(bytes(stream.written))
    uri = _uri(zipped)
    plan = archives.plan_archives([uri], IMAGE_SUFFIXES)
    assert list(plan.members["path"]) == [f"{uri}!/{name}" for name in names]
    assert (plan.members[archives.FLAGS] & 0x8).all()  # the data descriptor bit
    expected = [path.read_bytes() for path in sources]
    assert archives.read_members(plan.members.to_dict("records")) == expected
    assert read_files(list(plan.members["path"])) == expected


def test_member_kind_skips_macos_metadata_and_ignores_folders_and_other_files():
    kind = archives.member_kind
    assert kind("a/ISIC_1.JPEG", False, IMAGE_SUFFIXES) == "image"
    assert kind("a/ISIC_1.dcm", False, IMAGE_SUFFIXES) == "image"
    assert kind("__MACOSX/a/ISIC_1.jpg", False, IMAGE_SUFFIXES) == "skipped"
    assert kind("a/._ISIC_1.jpg", False, IMAGE_SUFFIXES) == "skipped"
    assert kind("a/images.jpg/", True, IMAGE_SUFFIXES) == "ignored"
    assert kind("a/notes.txt", False, IMAGE_SUFFIXES) == "ignored"


def test_each_bad_member_is_a_row_with_its_reason(generated, tmp_path):
    good, crc, locked, d64, cut = (path.read_bytes() for path in _jpegs(generated)[:5])
    zipped = _write_zip(
        tmp_path / "bad-members.zip",
        [
            ("good.jpg", good, STORED),
            ("empty.jpg", b"", STORED),
            ("crc.jpg", crc, STORED),
            ("locked.jpg", locked, STORED),
            ("d64.jpg", d64, STORED),
            ("cut.jpg", cut, DEFLATED),
        ],
    )
    _flip_data_byte(zipped, "crc.jpg")
    _patch_member(zipped, "locked.jpg", flags=0x1)
    _patch_member(zipped, "d64.jpg", method=DEFLATE64)
    uri = _uri(zipped)
    plan = archives.plan_archives([uri], IMAGE_SUFFIXES)
    assert plan.counts[uri] == {"members": 6, "images": 6, "skipped": 0, "ignored": 0}
    planned = {
        name: (None if _missing(reason) else reason)
        for name, reason in zip(plan.members[archives.MEMBER], plan.members["reason"], strict=True)
    }
    # The central directory alone tells an encrypted member and an unreadable method.
    assert planned == {
        "good.jpg": None,
        "empty.jpg": None,
        "crc.jpg": None,
        "locked.jpg": schema.REASON_ENCRYPTED,
        "d64.jpg": schema.REASON_UNSUPPORTED_COMPRESSION,
        "cut.jpg": None,
    }
    messages = plan.members.set_index(archives.MEMBER)["message"]
    assert "deflate64" in messages["d64.jpg"].lower()

    records = _records(plan)
    order = ["good.jpg", "empty.jpg", "crc.jpg", "locked.jpg", "d64.jpg"]
    read = archives.read_members([records[name] for name in order])
    assert read[0] == good and read[1] == b""
    assert [_reason(value) for value in read] == [
        None,
        None,
        schema.REASON_BAD_MEMBER,
        schema.REASON_ENCRYPTED,
        schema.REASON_UNSUPPORTED_COMPRESSION,
    ]
    assert "CRC" in read[2].message
    results = decode_many(read, 75, 100)
    assert [result.reason for result in results] == [
        None,
        schema.REASON_EMPTY,
        schema.REASON_BAD_MEMBER,
        schema.REASON_ENCRYPTED,
        schema.REASON_UNSUPPORTED_COMPRESSION,
    ]
    assert results[0].pixels is not None and all(result.pixels is None for result in results[1:])
    assert all(result.message for result in results[1:])

    # Cut data: a deflate stream that ends early, a compressed size running past the end of the
    # archive, an offset that is not a local header, and an archive gone since it was planned.
    member = records["cut.jpg"]
    half = {**member, archives.COMPRESSED: member[archives.COMPRESSED] // 2}
    past_the_end = {**member, archives.COMPRESSED: member[archives.COMPRESSED] + 10**6}
    misplaced = {**member, archives.OFFSET: member[archives.OFFSET] + 1}
    gone = {**member, archives.ARCHIVE: _uri(tmp_path / "gone.zip")}
    # A declared size that lies: smaller (a zip bomb's trick: inflating stops there, the CRC fails) or larger.
    smaller = {**member, "length": 1000}
    larger = {**member, "length": member["length"] + 5}
    read = archives.read_members([member, half, past_the_end, misplaced, gone, smaller, larger])
    assert read[0] == cut
    assert [_reason(value) for value in read[1:]] == [
        schema.REASON_BAD_MEMBER,
        schema.REASON_BAD_MEMBER,
        schema.REASON_BAD_MEMBER,
        schema.REASON_UNREADABLE,
        schema.REASON_BAD_MEMBER,
        schema.REASON_BAD_MEMBER,
    ]
    assert "cut short" in read[2].message

    # A member over the size limit is refused by its declared size, never read.
    small, large = sorted(["good.jpg", "cut.jpg"], key=lambda name: records[name]["length"])
    limit = records[small]["length"]
    (refused, taken) = archives.read_members([records[large], records[small]], max_bytes=limit)
    assert limit < records[large]["length"] and taken == (good if small == "good.jpg" else cut)
    assert _reason(refused) == schema.REASON_TOO_LARGE
    assert f"{records[large]['length']:,} bytes" in refused.message

    # By path: the same reasons, and a name the archive does not hold.
    by_path = read_files([f"{uri}!/crc.jpg", f"{uri}!/locked.jpg", f"{uri}!/d64.jpg", f"{uri}!/nothing.jpg"])
    assert [_reason(value) for value in by_path] == [
        schema.REASON_BAD_MEMBER,
        schema.REASON_ENCRYPTED,
        schema.REASON_UNSUPPORTED_COMPRESSION,
        schema.REASON_UNREADABLE,
    ]
    with pytest.raises(ImageError) as raised:
        read_file(f"{uri}!/crc.jpg")
    assert raised.value.reason == schema.REASON_BAD_MEMBER


def test_a_cut_archive_or_a_file_that_is_not_a_zip_is_one_bad_archive_row(generated, tmp_path):
    sources = _jpegs(generated)[:3]
    good = _write_zip(tmp_path / "good.zip", [(path.name, path.read_bytes(), STORED) for path in sources])
    cut = tmp_path / "cut.zip"
    cut.write_bytes(good.read_bytes()[:-100])  # a download cut short: no end of central directory
    not_zip = tmp_path / "x.zip"
    not_zip.write_bytes(sources[0].read_bytes())
    empty = tmp_path / "empty.ZIP"
    empty.write_bytes(b"")
    uris = [_uri(path) for path in (good, cut, not_zip, empty)]
    plan = archives.plan_archives(uris, IMAGE_SUFFIXES)
    broken = plan.broken.set_index("path")
    assert sorted(broken.index) == sorted(uris[1:])
    assert (broken["reason"] == schema.REASON_BAD_ARCHIVE).all()
    for uri in uris[1:]:
        assert uri in broken.loc[uri, "message"]
        assert set(plan.counts[uri]) == {"error"}
        assert _missing(broken.loc[uri, archives.OFFSET]) and _missing(broken.loc[uri, "length"])
    assert plan.counts[uris[0]] == {"members": 3, "images": 3, "skipped": 0, "ignored": 0}
    assert plan.totals() == {
        "archives": 4,
        "broken_archives": 3,
        "members": 3,
        "images": 3,
        "skipped": 0,
        "ignored": 0,
    }
    readable = plan.members[plan.members["reason"].map(_missing)]
    assert list(readable["path"]) == [f"{uris[0]}!/{path.name}" for path in sources]
    # A member path into a broken archive is a row with its reason too.
    (value,) = read_files([f"{uris[1]}!/{sources[0].name}"])
    assert _reason(value) == schema.REASON_BAD_ARCHIVE


# --------------------------------------------------------------------------------------------------
# Ingest


def _ingest(images: list[str], metadata: Path, output: Path, *extra: str) -> int:
    arguments = ["--images", *images, "--metadata", str(metadata), "--output", str(output), "--seed", "5"]
    return ingest_job.main([*arguments, *extra])


@pytest.fixture(scope="module")
def dataset_zips(generated, tmp_path_factory) -> dict:
    """The two part folders as zips: part 1 stored with its JPEGs at the root and a macOS zip's
    metadata, part 2 deflated with its JPEGs in a folder, a folder entry and a text file."""
    root = tmp_path_factory.mktemp("zips")
    first, second = (sorted((generated / folder).glob("*.jpg")) for folder in schema.IMAGE_FOLDERS)
    apple = b"\x00\x05\x16\x07apple double"
    part_1 = [(path.name, path.read_bytes(), STORED) for path in first]
    part_1 += [("__MACOSX/", b"", STORED)] + [
        (f"__MACOSX/._{path.name}", apple, STORED) for path in first[:2]
    ]
    folder = schema.IMAGE_FOLDERS[1]
    part_2 = [(f"{folder}/", b"", STORED), (f"{folder}/license.txt", b"CC BY-NC 4.0", DEFLATED)]
    part_2 += [(f"{folder}/{path.name}", path.read_bytes(), DEFLATED) for path in second]
    zips = [_write_zip(root / "part_1.zip", part_1), _write_zip(root / "part_2.zip", part_2)]
    members = {path.stem: f"{_uri(zips[0])}!/{path.name}" for path in first}
    members |= {path.stem: f"{_uri(zips[1])}!/{folder}/{path.name}" for path in second}
    counts = {
        _uri(zips[0]): {"members": len(part_1), "images": len(first), "skipped": 3, "ignored": 0},
        _uri(zips[1]): {"members": len(part_2), "images": len(second), "skipped": 0, "ignored": 2},
    }
    return {"zips": zips, "members": members, "counts": counts}


@pytest.mark.slow
def test_ingest_of_zips_equals_ingest_of_the_folders(spark, generated, dataset_zips, tmp_path):
    metadata = generated / schema.METADATA_FILE
    folders = [str(generated / folder) for folder in schema.IMAGE_FOLDERS]
    assert _ingest(folders, metadata, tmp_path / "from-folders") == 0
    assert _ingest([str(path) for path in dataset_zips["zips"]], metadata, tmp_path / "from-zips") == 0
    mixed = [folders[0], str(dataset_zips["zips"][1])]  # a folder and a zip in one run
    assert _ingest(mixed, metadata, tmp_path / "mixed") == 0
    from_folders = pd.read_parquet(tmp_path / "from-folders").set_index(schema.IMAGE_ID).sort_index()
    from_zips = pd.read_parquet(tmp_path / "from-zips").set_index(schema.IMAGE_ID).sort_index()
    ids = sorted(pd.read_csv(metadata)[schema.IMAGE_ID])
    assert len(ids) == 20
    assert list(from_zips.index) == list(from_folders.index) == ids
    assert (from_zips[schema.IMAGE] == from_folders[schema.IMAGE]).all()  # the same stored pixels
    assert from_zips[schema.SOURCE_PATH].to_dict() == dataset_zips["members"]
    from_both = pd.read_parquet(tmp_path / "mixed").set_index(schema.IMAGE_ID).sort_index()
    assert list(from_both.index) == ids and (from_both[schema.IMAGE] == from_folders[schema.IMAGE]).all()
    first = {path.stem for path in (generated / schema.IMAGE_FOLDERS[0]).glob("*.jpg")}
    for image_id, path in from_both[schema.SOURCE_PATH].items():
        expected = _uri(generated / schema.IMAGE_FOLDERS[0] / f"{image_id}.jpg")
        assert path == (expected if image_id in first else dataset_zips["members"][image_id])
    same = [schema.LESION_ID, schema.DX, schema.LABEL, schema.HEIGHT, schema.WIDTH, schema.SPLIT]
    pd.testing.assert_frame_equal(
        from_zips[same].astype(str), from_folders[same].astype(str), check_categorical=False
    )

    manifest = json.loads((tmp_path / "from-zips" / "_manifest.json").read_text())
    counts = dataset_zips["counts"]
    assert manifest["archives"]["by_archive"] == counts
    assert manifest["archives"]["totals"] == {
        "archives": 2,
        "broken_archives": 0,
        "members": sum(count["members"] for count in counts.values()),
        "images": 20,
        "skipped": 3,
        "ignored": 2,
    }
    files = manifest["counts"]["files"]
    assert files["seen"] == files["ingested"] == 20 and files["quarantined"] == 0
    assert "archives" not in json.loads((tmp_path / "from-folders" / "_manifest.json").read_text())


@pytest.fixture(scope="module")
def odd_zip(spark, generated, tmp_path_factory) -> dict:
    """One ingest of a zip whose members are good images, names pointing out of the archive (`../evil.jpg`,
    `/abs.jpg`), and every kind of bad member, each with a metadata row of its own."""
    root = tmp_path_factory.mktemp("odd")
    sources = _jpegs(generated)
    good = sources[:4]
    named = {
        "../evil.jpg": sources[4],
        "/abs.jpg": sources[5],
        "ISIC_empty.jpg": None,
        "ISIC_crc.jpg": sources[6],
        "ISIC_locked.jpg": sources[7],
        "ISIC_d64.jpg": sources[8],
    }
    members = [(path.name, path.read_bytes(), STORED) for path in good]
    members += [(name, b"" if path is None else path.read_bytes(), STORED) for name, path in named.items()]
    zipped = _write_zip(root / "odd.zip", members)
    _flip_data_byte(zipped, "ISIC_crc.jpg")
    _patch_member(zipped, "ISIC_locked.jpg", flags=0x1)
    _patch_member(zipped, "ISIC_d64.jpg", method=DEFLATE64)

    metadata = pd.read_csv(generated / schema.METADATA_FILE, dtype=str, keep_default_na=False)
    kept = metadata[metadata[schema.IMAGE_ID].isin([path.stem for path in good])]
    extra = []
    for number, name in enumerate(named):
        image_id = Path(name).stem
        row = metadata.iloc[number].to_dict()
        extra.append({**row, schema.IMAGE_ID: image_id, schema.LESION_ID: f"HAM_{image_id}"})
    csv = root / "metadata.csv"
    pd.concat([kept, pd.DataFrame(extra)], ignore_index=True).to_csv(csv, index=False)
    output = root / "table"
    code = _ingest([str(zipped)], csv, output, "--max-bad-fraction", "0.95")
    return {
        "code": code,
        "uri": _uri(zipped),
        "output": output,
        "good": good,
        "evil": sources[4],
        "abs": sources[5],
        "members": len(members),
    }


@pytest.mark.slow
def test_member_names_pointing_out_of_the_archive_are_only_names(odd_zip, tmp_path_factory):
    assert odd_zip["code"] == 0
    table = pd.read_parquet(odd_zip["output"]).set_index(schema.IMAGE_ID)
    uri = odd_zip["uri"]
    assert sorted(table.index) == sorted([path.stem for path in odd_zip["good"]] + ["evil", "abs"])
    assert table.loc["evil", schema.SOURCE_PATH] == f"{uri}!/../evil.jpg"
    assert table.loc["abs", schema.SOURCE_PATH] == f"{uri}!//abs.jpg"
    for image_id in ("evil", "abs"):
        expected = decode_image(odd_zip[image_id].read_bytes(), 75, 100).tobytes()
        assert table.loc[image_id, schema.IMAGE] == expected
    # Nothing was extracted: no evil.jpg or abs.jpg beside the archive, above it, in the output or at /.
    base = tmp_path_factory.getbasetemp()
    for where in (base, odd_zip["output"]):
        assert not list(where.rglob("evil.jpg")) and not list(where.rglob("abs.jpg"))
    for where in (base.parent, Path.cwd(), Path.cwd().parent, Path(tempfile.gettempdir()), Path("/")):
        assert not (where / "evil.jpg").exists() and not (where / "abs.jpg").exists()


@pytest.mark.slow
def test_each_bad_member_is_one_quarantine_row_and_the_job_goes_on(odd_zip):
    assert odd_zip["code"] == 0
    quarantine = pd.read_parquet(odd_zip["output"] / "_quarantine")
    files = quarantine[quarantine["item"] == schema.ITEM_FILE].set_index(schema.IMAGE_ID)
    uri = odd_zip["uri"]
    expected = {
        "ISIC_empty": schema.REASON_EMPTY,
        "ISIC_crc": schema.REASON_BAD_MEMBER,
        "ISIC_locked": schema.REASON_ENCRYPTED,
        "ISIC_d64": schema.REASON_UNSUPPORTED_COMPRESSION,
    }
    assert files["reason"].to_dict() == expected
    assert files[schema.SOURCE_PATH].to_dict() == {
        image_id: f"{uri}!/{image_id}.jpg" for image_id in expected
    }
    assert files["message"].map(bool).all()
    rows = quarantine[quarantine["item"] == schema.ITEM_ROW].set_index(schema.IMAGE_ID)
    assert rows["reason"].to_dict() == {image_id: schema.REASON_IMAGE_REJECTED for image_id in expected}
    manifest = json.loads((odd_zip["output"] / "_manifest.json").read_text())
    assert manifest["archives"]["totals"] == {
        "archives": 1,
        "broken_archives": 0,
        "members": odd_zip["members"],
        "images": odd_zip["members"],
        "skipped": 0,
        "ignored": 0,
    }
    assert manifest["counts"]["files"]["ingested"] == 6 and manifest["counts"]["files"]["quarantined"] == 4


@pytest.mark.slow
def test_ingest_names_a_broken_archive_in_one_line(spark, generated, dataset_zips, tmp_path, capsys):
    cut = tmp_path / "cut.zip"
    cut.write_bytes(dataset_zips["zips"][0].read_bytes()[:-100])
    code = _ingest(
        [str(dataset_zips["zips"][1]), str(cut)], generated / schema.METADATA_FILE, tmp_path / "out"
    )
    assert code == 2
    naming = [line for line in capsys.readouterr().err.splitlines() if str(cut) in line]
    assert len(naming) == 1 and "zip" in naming[0]
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------------
# Scoring


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp("models") / "model")


def _score(model: Path, images: list[str], output: Path, *extra: str) -> int:
    arguments = ["--model", str(model), "--images", *images, "--output", str(output)]
    return score_job.main([*arguments, "--precision", "float32", "--batch-size", "8", *extra])


@pytest.fixture(scope="module")
def scored(spark, generated, dataset_zips, model_dir, tmp_path_factory) -> dict:
    """The part folders scored, and their zips scored beside a broken archive."""
    root = tmp_path_factory.mktemp("scored")
    broken = root / "broken.zip"
    broken.write_bytes(dataset_zips["zips"][1].read_bytes()[:-100])
    folders = [str(generated / folder) for folder in schema.IMAGE_FOLDERS]
    assert _score(model_dir, folders, root / "folders") == 0
    zips = [*map(str, dataset_zips["zips"]), str(broken)]
    assert _score(model_dir, zips, root / "zips", "--conf", "max_bad_fraction=0.5") == 0
    return {
        "folders": pd.read_parquet(root / "folders"),
        "zips": pd.read_parquet(root / "zips"),
        "manifest": json.loads((root / "zips" / "_manifest.json").read_text()),
        "broken": _uri(broken),
    }


@pytest.mark.slow
def test_zip_members_score_as_the_same_files_on_disk(scored, dataset_zips):
    files = scored["folders"].set_index(schema.IMAGE_ID).sort_index()
    zips = scored["zips"]
    members = zips[zips[PATH] != scored["broken"]].set_index(schema.IMAGE_ID).sort_index()
    assert len(files) == len(members) == 20 and list(files.index) == list(members.index)
    assert members[PATH].to_dict() == dataset_zips["members"]
    assert members[ERROR_REASON].map(_missing).all() and files[ERROR_REASON].map(_missing).all()
    np.testing.assert_allclose(
        members[PROBS].to_numpy(np.float64), files[PROBS].to_numpy(np.float64), rtol=0, atol=1e-6
    )
    assert list(members[PREDICTED_DX]) == list(files[PREDICTED_DX])


@pytest.mark.slow
def test_a_broken_archive_beside_a_good_one_is_one_error_row(scored, dataset_zips):
    zips = scored["zips"]
    assert len(zips) == 21 and zips[PATH].is_unique
    errors = zips[zips[ERROR_REASON].map(lambda reason: not _missing(reason))]
    assert list(errors[PATH]) == [scored["broken"]]
    assert errors[ERROR_REASON].iloc[0] == schema.REASON_BAD_ARCHIVE
    assert errors[ERROR].iloc[0].startswith(f"{schema.REASON_BAD_ARCHIVE}: ")
    assert errors[PROBS].isna().all(axis=None)
    assert set(zips[PATH]) - {scored["broken"]} == set(dataset_zips["members"].values())
    archives_record = scored["manifest"]["archives"]
    assert archives_record["totals"] == {
        "archives": 3,
        "broken_archives": 1,
        "members": sum(count["members"] for count in dataset_zips["counts"].values()),
        "images": 20,
        "skipped": 3,
        "ignored": 2,
    }
    assert set(archives_record["by_archive"][scored["broken"]]) == {"error"}
    counts = scored["manifest"]["counts"]
    assert counts["rows"] == counts["distinct_paths"] == 21 and counts["errors"] == 1


@pytest.mark.slow
def test_predict_udf_reads_member_paths_as_the_job_does(spark, scored, dataset_zips, model_dir):
    job = scored["zips"].set_index(PATH)
    missing = f"{_uri(dataset_zips['zips'][0])}!/ISIC_0000000.jpg"
    paths = [*dataset_zips["members"].values(), missing, f"{scored['broken']}!/ISIC_0000000.jpg"]
    predict = predict_udf(str(model_dir), batch_size=8, spark=spark, precision="float32")
    frame = spark.createDataFrame([(path,) for path in paths], "path string")
    got = frame.select("path", predict("path").alias("p")).select("path", "p.*").toPandas().set_index("path")
    members = list(dataset_zips["members"].values())
    np.testing.assert_allclose(
        got.loc[members, PROBS].to_numpy(np.float64),
        job.loc[members, PROBS].to_numpy(np.float64),
        rtol=0,
        atol=1e-6,
    )
    assert list(got.loc[members, PREDICTED_DX]) == list(job.loc[members, PREDICTED_DX])
    assert got.loc[members, ERROR_REASON].map(_missing).all()
    assert got.loc[missing, ERROR_REASON] == schema.REASON_UNREADABLE
    assert got.loc[paths[-1], ERROR_REASON] == schema.REASON_BAD_ARCHIVE


@pytest.mark.slow
def test_resume_after_a_kill_scores_each_member_once(spark, generated, model_dir, tmp_path, monkeypatch):
    sources = _jpegs(generated)[:12]
    zipped = _write_zip(
        tmp_path / "archive.zip",
        [
            (f"{index % 3}/{path.name}", path.read_bytes(), (STORED, DEFLATED)[index % 2])
            for index, path in enumerate(sources)
        ],
    )
    expected = {f"{_uri(zipped)}!/{index % 3}/{path.name}" for index, path in enumerate(sources)}
    output = tmp_path / "predictions"
    kill_on_commit(monkeypatch, output)
    with pytest.raises(Killed):
        _score(model_dir, [str(zipped)], output, "--conf", "chunk_files=3")
    monkeypatch.undo()
    before = pd.read_parquet(output)
    assert 0 < len(before) < 12 and before[PATH].is_unique and set(before[PATH]) <= expected
    assert json.loads((output / "_manifest.json").read_text())["status"] == "running"

    assert _score(model_dir, [str(zipped)], output, "--conf", "chunk_files=3", "--mode", "resume") == 0
    after = pd.read_parquet(output)
    assert len(after) == 12 and after[PATH].is_unique and set(after[PATH]) == expected
    assert after[ERROR_REASON].map(_missing).all()
    kept = after.set_index(PATH).loc[sorted(before[PATH])]
    np.testing.assert_array_equal(
        kept[PROBS].to_numpy(), before.set_index(PATH).loc[sorted(before[PATH]), PROBS].to_numpy()
    )
    run = json.loads((output / "_manifest.json").read_text())["run"]
    assert run["already_scored"] == len(before) and run["files_scored"] == 12 - len(before)
