"""prepare(): mirror copies, checksum verification and its stamp cache, downloads (served locally), the CLI."""
from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from urllib.error import URLError

import pytest

import zoneout.data.download as download
from zoneout.data.download import DATASETS, DataError, DatasetSpec, FileSpec, Source, prepare

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _no_mirror_from_env(monkeypatch):
    monkeypatch.delenv(download.MIRROR_ENV, raising=False)


def _sha(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.startswith(".partial") or p.name.startswith(".download"))


def _serve(monkeypatch, responses: dict) -> list[str]:
    """Replace urlopen: url -> bytes (served) or Exception (raised). Returns the list of requested urls."""
    requested = []

    def fake_urlopen(url, timeout=None):
        assert timeout is not None, "downloads must use a timeout"
        requested.append(url)
        answer = responses.get(url, URLError(f"unreachable: {url}"))
        if isinstance(answer, Exception):
            raise answer
        return io.BytesIO(answer)

    monkeypatch.setattr(download, "urlopen", fake_urlopen)
    return requested


def _count_hashing(monkeypatch) -> list[Path]:
    hashed = []
    real = download.sha256_file

    def counting(path):
        hashed.append(Path(path))
        return real(path)

    monkeypatch.setattr(download, "sha256_file", counting)
    return hashed


def _bump_mtime(path: Path) -> None:
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_registry_checksums_equal_the_shared_sha256sums(shared_data):
    listed = dict(reversed(line.split()) for line in (shared_data / "SHA256SUMS").read_text().splitlines() if line)
    registered = {f.relpath: f.sha256 for spec in DATASETS.values() for f in spec.files if f.sha256}
    assert registered == listed
    assert DATASETS["text8"].files[0].sha256 is None and DATASETS["text8"].files[0].size == 100_000_000
    assert DATASETS["mnist"].files[0].sources[0].url.startswith("https://ossci-datasets.s3.amazonaws.com/mnist/")


def test_prepare_copies_verified_files_from_the_mirror(shared_data, tmp_path, monkeypatch):
    hashed = _count_hashing(monkeypatch)
    lines = []
    folder = prepare("ptb_word", tmp_path, mirror=shared_data, log=lines.append)
    assert folder == tmp_path / "ptb_word"
    for file in DATASETS["ptb_word"].files:
        copied = tmp_path / file.relpath
        assert copied.read_bytes() == (shared_data / file.relpath).read_bytes()
        assert hashlib.sha256(copied.read_bytes()).hexdigest() == file.sha256
    assert len(hashed) == 3 and lines == [f"{f.relpath}: copied from {shared_data}" for f in DATASETS["ptb_word"].files]
    assert _leftovers(tmp_path) == []


def test_second_prepare_uses_the_stamp_and_rehashes_only_a_touched_file(shared_data, tmp_path, monkeypatch):
    prepare("mnist", tmp_path, mirror=shared_data)
    hashed = _count_hashing(monkeypatch)
    lines = []
    prepare("mnist", tmp_path, mirror=None, log=lines.append)
    assert hashed == [] and all(line.endswith(": already verified") for line in lines) and len(lines) == 4
    touched = tmp_path / "mnist/t10k-labels-idx1-ubyte.gz"
    _bump_mtime(touched)  # same bytes, new mtime: must be checked again, once
    prepare("mnist", tmp_path)
    prepare("mnist", tmp_path)
    assert hashed == [touched]


def test_env_mirror_is_used_when_no_argument(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv(download.MIRROR_ENV, str(shared_data))
    prepare("ptb_char", tmp_path)
    assert (tmp_path / "ptb_char/ptb.char.valid.txt").stat().st_size == 786_084


def test_corrupted_copy_in_data_dir_is_reported_not_replaced(shared_data, tmp_path):
    prepare("ptb_word", tmp_path, mirror=shared_data)
    corrupted = tmp_path / "ptb_word/ptb.valid.txt"
    payload = bytearray(corrupted.read_bytes())
    payload[100] ^= 1  # same size: only the checksum can tell
    corrupted.write_bytes(bytes(payload))
    _bump_mtime(corrupted)  # a write within the clock tick of the copy could keep the stamp's mtime
    with pytest.raises(DataError) as caught:
        prepare("ptb_word", tmp_path, mirror=shared_data)
    message = str(caught.value)
    assert message.startswith("ptb_word/ptb.valid.txt: sha256 mismatch") and "\n" not in message
    assert "make data" in message
    assert corrupted.read_bytes() == bytes(payload)  # left for the user to inspect


def test_corrupted_mirror_file_is_rejected_without_leaving_a_partial_file(shared_data, tmp_path):
    mirror = tmp_path / "mirror"
    (mirror / "ptb_word").mkdir(parents=True)
    for file in DATASETS["ptb_word"].files:
        (mirror / file.relpath).write_bytes((shared_data / file.relpath).read_bytes())
    (mirror / "ptb_word/ptb.test.txt").write_text("not the test set\n")
    data_dir = tmp_path / "data"
    with pytest.raises(DataError, match=r"ptb_word/ptb\.test\.txt: size 17 bytes, expected exactly 449,945"):
        prepare("ptb_word", data_dir, mirror=mirror)
    assert not (data_dir / "ptb_word/ptb.test.txt").exists() and _leftovers(data_dir) == []
    assert (data_dir / "ptb_word/ptb.train.txt").exists()  # files before it were verified and kept


def test_missing_file_without_mirror_and_no_network_is_a_data_error(tmp_path):
    with pytest.raises(DataError) as caught:
        prepare("mnist", tmp_path)  # conftest makes every urlopen fail
    message = str(caught.value)
    assert message.startswith("mnist/train-images-idx3-ubyte.gz: not in the data dir or a mirror")
    assert "3 source(s)" in message and "\n" not in message
    assert not (tmp_path / "mnist/train-images-idx3-ubyte.gz").exists() and _leftovers(tmp_path) == []


def test_unknown_dataset_names_the_allowed_ones(tmp_path):
    with pytest.raises(ValueError, match=r"dataset must be one of \['mnist', 'ptb_char', 'ptb_word', 'text8'\]"):
        prepare("ptb", tmp_path)


def test_mnist_download_uses_the_first_url_that_works(shared_data, tmp_path, monkeypatch):
    responses = {}
    for file in DATASETS["mnist"].files:
        name = file.relpath.split("/")[1]
        responses[download.MNIST_URLS[0] + name] = URLError("S3 down")
        responses[download.MNIST_URLS[1] + name] = (shared_data / file.relpath).read_bytes()
    requested = _serve(monkeypatch, responses)
    lines = []
    prepare("mnist", tmp_path, log=lines.append)
    assert [url.split("/")[2] for url in requested] == ["ossci-datasets.s3.amazonaws.com", "storage.googleapis.com"] * 4
    assert [line for line in lines if not line.startswith("  ")] == [
        f"{f.relpath}: downloaded" for f in DATASETS["mnist"].files]
    labels = "mnist/t10k-labels-idx1-ubyte.gz"
    assert (tmp_path / labels).read_bytes() == (shared_data / labels).read_bytes()
    assert _leftovers(tmp_path) == []


def _tgz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as bundle:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            bundle.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


def test_ptb_archive_is_fetched_once_and_its_members_verified(shared_data, tmp_path, monkeypatch):
    members = {f"./simple-examples/data/{f.relpath.split('/')[1]}": (shared_data / f.relpath).read_bytes()
               for f in DATASETS["ptb_word"].files}
    members["./simple-examples/data/ptb.char.train.txt"] = b"unrelated member"
    requested = _serve(monkeypatch, {download.PTB_ARCHIVE: _tgz(members)})
    prepare("ptb_word", tmp_path)
    assert requested == [download.PTB_ARCHIVE]
    for file in DATASETS["ptb_word"].files:
        assert download.sha256_file(tmp_path / file.relpath) == file.sha256
    assert _leftovers(tmp_path) == []


def _tiny_spec(monkeypatch, files: tuple[FileSpec, ...]) -> None:
    monkeypatch.setitem(DATASETS, "tiny", DatasetSpec("tiny", files))


def test_bad_download_falls_back_to_the_next_source_and_never_leaves_a_partial_file(tmp_path, monkeypatch):
    good = b"the right bytes\n"
    spec = FileSpec("tiny/file.txt", _sha(good), len(good),
                    (Source("https://a/file.txt"), Source("https://b/archive.tgz", "./inner/file.txt")))
    _tiny_spec(monkeypatch, (spec,))
    requested = _serve(monkeypatch, {"https://a/file.txt": b"the wrong bytes\n",
                                     "https://b/archive.tgz": _tgz({"./inner/file.txt": good})})
    prepare("tiny", tmp_path)
    assert requested == ["https://a/file.txt", "https://b/archive.tgz"]
    assert (tmp_path / "tiny/file.txt").read_bytes() == good and _leftovers(tmp_path) == []

    (tmp_path / "tiny/file.txt").unlink()
    _serve(monkeypatch, {"https://a/file.txt": b"the wrong bytes\n",
                         "https://b/archive.tgz": _tgz({"./inner/other.txt": good})})
    with pytest.raises(DataError, match=r"^tiny/file\.txt: .*2 source\(s\); last: https://b/archive\.tgz"):
        prepare("tiny", tmp_path)
    assert not (tmp_path / "tiny/file.txt").exists() and _leftovers(tmp_path) == []


def test_zip_member_with_size_check_only(tmp_path, monkeypatch):
    text = b"anarchism originated as a term of abuse"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        bundle.writestr("text8", text)
    spec = FileSpec("tiny/text8", None, len(text), (Source("http://host/text8.zip", "text8"),))
    _tiny_spec(monkeypatch, (spec,))
    _serve(monkeypatch, {"http://host/text8.zip": buffer.getvalue()})
    prepare("tiny", tmp_path)
    assert (tmp_path / "tiny/text8").read_bytes() == text
    assert download.verified_digests("tiny", tmp_path) == {"tiny/text8": _sha(text)}

    (tmp_path / "tiny/text8").write_bytes(text + b" extra")
    with pytest.raises(DataError, match=r"^tiny/text8: size 45 bytes, expected exactly 39; delete"):
        prepare("tiny", tmp_path)


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO_ROOT / "scripts/fetch_data.py"), *args],
                          capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)


def test_cli_copies_from_a_mirror_then_reports_already_verified(shared_data, tmp_path):
    first = _run_cli("--dataset", "ptb_word", "mnist", "--data-dir", str(tmp_path), "--mirror", str(shared_data))
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [f"{f.relpath}: copied from {shared_data}"
                                         for name in ("ptb_word", "mnist") for f in DATASETS[name].files]
    again = _run_cli("--dataset", "ptb_word", "--data-dir", str(tmp_path))
    assert again.returncode == 0 and again.stdout.count("already verified") == 3


def test_cli_corrupted_mirror_exits_1_with_one_line_on_stderr(shared_data, tmp_path):
    mirror = tmp_path / "mirror"
    (mirror / "ptb_word").mkdir(parents=True)
    for file in DATASETS["ptb_word"].files:
        (mirror / file.relpath).write_bytes((shared_data / file.relpath).read_bytes())
    corrupted = mirror / "ptb_word/ptb.train.txt"
    payload = bytearray(corrupted.read_bytes())
    payload[0] ^= 1
    corrupted.write_bytes(bytes(payload))
    result = _run_cli("--dataset", "ptb_word", "--data-dir", str(tmp_path / "data"), "--mirror", str(mirror))
    assert result.returncode == 1 and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr
    assert f"{corrupted}: sha256 mismatch" in result.stderr
