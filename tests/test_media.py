"""Pictures stored under their content hash, by several writers at once."""
from concurrent.futures import ThreadPoolExecutor

from storage.media import store_content


def test_the_same_picture_stored_at_once_by_many_writers(tmp_path):
    data = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 400
    with ThreadPoolExecutor(8) as pool:
        paths = list(pool.map(lambda _: store_content(tmp_path / "media", data, ".png"), range(32)))
    assert len(set(paths)) == 1 and paths[0].read_bytes() == data
    assert [p.name for p in (tmp_path / "media").iterdir()] == [paths[0].name]  # no temporary file left


def test_different_pictures_get_different_names(tmp_path):
    a = store_content(tmp_path, b"one", ".jpg")
    b = store_content(tmp_path, b"two", ".jpg")
    assert a != b and a.suffix == ".jpg" and a.read_bytes() == b"one"
