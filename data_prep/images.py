"""Readers for image sources: CIFAR-10/100 and STL-10 in torchvision's on-disk layout, and image folders.

An image folder is laid out <root>/<split>/<class>/<image> and may be a directory or a .tar,
.tar.gz/.tgz, .tar.bz2, .tar.xz or .zip archive, which is read without unpacking to disk: a plain
.tar is memory-mapped and a .zip read member by member (both lazily), while a compressed tarball
is decompressed into memory once (about the size of its images), since gzip allows no seeking.
"""
from __future__ import annotations

import bz2
import gzip
import logging
import lzma
import mmap
import os
import pickle
import stat
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from crossmodal.errors import DataError
from data_prep.source import Source, SplitSource

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
SPLIT_ORDER = ("train", "test")  # written first, in this order; other splits follow sorted
IMREAD_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)  # OpenCV >= 4.10 decodes straight to RGB


def decode_image(data) -> np.ndarray | None:
    """Encoded image bytes -> (H, W, 3) uint8 RGB, or None when they are not a readable image."""
    buffer = np.frombuffer(data, np.uint8)
    if buffer.size == 0:
        return None
    try:
        image = cv2.imdecode(buffer, IMREAD_RGB if IMREAD_RGB is not None else cv2.IMREAD_COLOR)
    except cv2.error:
        return None
    if image is None:
        return None
    return image if IMREAD_RGB is not None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


# ----------------------------------------------------------------------------- image folders

@dataclass(frozen=True, slots=True)
class ImageItem:
    """One image file of a folder or archive: its display name, how to read it, and its label."""

    name: str  # "<path>" or "<archive>:<member>", used in warnings and provenance
    handle: Any  # a path, a memoryview of the archive, or a ZipInfo
    label: int

    def __str__(self) -> str:
        return self.name


@dataclass
class FileTree:
    """The files and folders of a directory or archive, as relative POSIX paths, and how to read a file."""

    files: dict[str, Any]  # relative path -> handle for `read`
    dirs: set[str]
    read: Callable[[Any], Any]  # handle -> bytes-like
    display: Callable[[str], str]  # relative path -> name shown to users


def _list_directory(root: Path) -> FileTree:
    """Walk a directory (hidden entries skipped); only regular files (or links to them) count as files.

    A FIFO, socket or device named *.jpg is left out: reading one would block or never end.
    """
    files, dirs = {}, set()
    for folder, subdirs, names in os.walk(root):
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        rel = Path(folder).relative_to(root).as_posix()
        prefix = "" if rel == "." else rel + "/"
        dirs.update(prefix + d for d in subdirs)
        with os.scandir(folder) as entries:
            regular = {e.name for e in entries if e.is_file()}  # d_type from the listing: no extra stat
        files.update((prefix + n, os.path.join(folder, n)) for n in names if not n.startswith(".") and n in regular)

    return FileTree(files, dirs, read_regular_file, lambda rel: str(root / rel))


def read_text(path: Path) -> str:
    """A small text file of the source (split list, class names) as UTF-8; DataError naming it otherwise."""
    if not path.is_file():
        raise DataError(f"{path}: not a regular file")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None


def read_regular_file(path: str) -> bytes | np.ndarray:
    """The bytes of a regular file, or b"" (an unreadable image) for anything else or an I/O error.

    Opened non-blocking and checked with fstat, so a file swapped for a FIFO after listing cannot hang the run.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return b""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return b""
        with os.fdopen(fd, "rb", closefd=False) as f:
            return np.frombuffer(f.read(), np.uint8)
    except OSError:
        return b""
    finally:
        os.close(fd)


def _tar_number(field: bytes) -> int:
    """A tar numeric field: octal text, or GNU base-256 when the high bit of the first byte is set."""
    if field[0] & 0x80:
        return int.from_bytes(field[1:], "big")
    return int(field.replace(b"\0", b" ").strip() or b"0", 8)


def _pax_records(data: bytes) -> dict[str, str]:
    """Parse a pax extended header ("<len> key=value\\n" records)."""
    records, pos = {}, 0
    while pos < len(data) and data[pos:pos + 1] != b"\0":
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        # a record holds at least its own length field and "\n" and ends inside the header: anything else
        # (a zero length would never advance) is a damaged header
        if length <= space - pos + 1 or pos + length > len(data) or data[pos + length - 1:pos + length] != b"\n":
            raise ValueError(f"bad pax record length {length}")
        key, _, value = data[space + 1:pos + length - 1].partition(b"=")
        records[key.decode()] = value.decode("utf-8", "replace")
        pos += length
    return records


def _header_checksums_ok(buf, starts: list[int], stored: list[int]) -> np.ndarray:
    """Check every tar header's checksum at once: byte sum with the checksum field read as spaces."""
    raw, ok = np.frombuffer(buf, np.uint8), np.zeros(len(starts), bool)
    for i in range(0, len(starts), 4096):  # bounded memory: 4096 headers at a time
        headers = raw[np.asarray(starts[i:i + 4096])[:, None] + np.arange(512)]  # (M, 512) uint8
        unsigned = headers.sum(axis=1, dtype=np.int64) - headers[:, 148:156].sum(axis=1, dtype=np.int64) + 8 * 32
        signed = unsigned - 256 * (headers > 127).sum(axis=1)  # some old tars summed signed chars
        expected = np.asarray(stored[i:i + 4096])
        ok[i:i + 4096] = (expected == unsigned) | (expected == signed)
    return ok


def _parse_tar(buf, src: Path) -> FileTree:
    """Index a tar held in memory or memory-mapped (POSIX ustar, GNU long names, pax) -> member offsets.

    Written out because tarfile spends ~50 us per member in Python (3 s for CIFAR-10's 60,000);
    header checksums are verified in one numpy pass at the end.
    """
    view, files, dirs = memoryview(buf), {}, set()
    pos, end, long_name, pax = 0, len(buf), None, {}
    starts, stored = [], []

    def corrupt(at: int) -> DataError:
        if at == 0 and bytes(buf[257:262]) != b"ustar":
            return DataError(f"{src}: not a tar archive (no valid tar header at its start)")
        return DataError(f"{src}: corrupt tar header at byte {at}; the archive is damaged, download it again")

    while pos + 512 <= end:
        header = buf[pos:pos + 512]
        if header.count(0) == 512:
            break  # end-of-archive marker
        try:
            stored.append(_tar_number(header[148:156]))
            kind = header[156:157]
            size = int(pax["size"]) if "size" in pax else _tar_number(header[124:136])
            if size < 0:
                raise ValueError(f"negative member size {size}")
        except (ValueError, IndexError):
            raise corrupt(pos) from None
        starts.append(pos)
        data = pos + 512
        if data + size > end:
            if not _header_checksums_ok(buf, starts[-1:], stored[-1:])[0]:
                raise corrupt(pos)
            raise DataError(f"{src}: truncated archive (a member ends past the end of the data); download it again")
        pos = data + (size + 511) // 512 * 512
        if kind == b"L":  # GNU: the data is the next member's long name
            long_name = bytes(view[data:data + size]).rstrip(b"\0").decode("utf-8", "replace")
            continue
        if kind == b"x":
            try:
                pax = _pax_records(bytes(view[data:data + size]))
            except (ValueError, UnicodeDecodeError):
                raise corrupt(data - 512) from None
            continue
        if kind == b"g":
            continue
        name = header[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
        if header[257:263] == b"ustar\0" and header[345]:  # POSIX ustar: names longer than 100 use a prefix
            name = header[345:500].split(b"\0", 1)[0].decode("utf-8", "replace") + "/" + name
        name = (pax.get("path") or long_name or name).lstrip("/").removeprefix("./")
        long_name, pax = None, {}
        if kind in (b"0", b"\0", b"7"):
            files[name] = view[data:data + size]
        elif kind == b"5":
            dirs.add(name.rstrip("/"))
    else:  # ran out of data without an end-of-archive marker: fine at a member boundary, not inside a header
        if pos < end and any(bytes(view[pos:end])):
            raise DataError(f"{src}: truncated archive (it ends inside a tar header); download it again")
    bad = np.flatnonzero(~_header_checksums_ok(buf, starts, stored))
    if bad.size:
        raise corrupt(starts[bad[0]])
    return FileTree(files, dirs, lambda handle: handle, lambda rel: f"{src}:{rel}")


ZIP_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}  # what zipfile reads


def _zip_member_problem(info: zipfile.ZipInfo) -> str | None:
    """Why a zip member cannot be read without a password or another decompressor, or None."""
    if info.flag_bits & 0x1:
        return "encrypted"
    if info.compress_type not in ZIP_METHODS:
        return f"compression method {info.compress_type}"
    return None


def _list_zip(src: Path) -> FileTree:
    """Index a zip archive; members are read (and CRC-checked) on demand, thread-safely."""
    try:
        archive = zipfile.ZipFile(src)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"{src}: truncated or corrupt zip archive ({e}); download it again") from None
    files = {i.filename: i for i in archive.infolist() if not i.is_dir()}
    dirs = {i.filename.rstrip("/") for i in archive.infolist() if i.is_dir()}
    unreadable = [i.filename for i in files.values() if _zip_member_problem(i)]
    if unreadable:
        log.warning("%s: %d member(s) are encrypted or use a compression Python cannot read (e.g. %s); they are "
                    "skipped and counted as unreadable images", src, len(unreadable), unreadable[0])

    def read(info: zipfile.ZipInfo):
        if _zip_member_problem(info):
            return b""  # counted as an unreadable image (stops the run under --strict)
        try:
            return archive.read(info)
        except (zipfile.BadZipFile, zlib.error, EOFError, lzma.LZMAError, OSError) as e:
            raise DataError(f"{src}:{info.filename}: corrupt archive member ({e}); download it again") from None

    return FileTree(files, dirs, read, lambda rel: f"{src}:{rel}")


DECOMPRESSORS = {b"\x1f\x8b": gzip.decompress, b"BZ": bz2.decompress, b"\xfd7": lzma.decompress}


def open_file_tree(src: Path) -> FileTree:
    """List a directory or archive (kind found from its first bytes, not its name)."""
    if src.is_dir():
        return _list_directory(src)
    if not src.exists():
        raise DataError(f"{src}: no such file or directory")
    if not src.is_file():  # a FIFO or device would block or never end
        raise DataError(f"{src}: not a folder or a regular file; expected a folder or a .tar/.tar.gz/.zip archive")
    with open(src, "rb") as f:
        head = f.read(512)
    if not head:
        raise DataError(f"{src}: empty file; expected a folder or a .tar/.tar.gz/.zip archive of images")
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return _list_zip(src)
    decompress = DECOMPRESSORS.get(head[:2])
    if decompress is not None:
        try:
            data = decompress(src.read_bytes())
        except (OSError, EOFError, zlib.error, lzma.LZMAError, ValueError) as e:
            raise DataError(f"{src}: truncated or corrupt archive ({e}); download it again") from None
        return _parse_tar(data, src)
    if len(head) == 512 and head[257:262] == b"ustar":
        with open(src, "rb") as f:
            return _parse_tar(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), src)
    raise DataError(f"{src}: not a folder, tar (.tar, .tar.gz, .tgz, .tar.bz2, .tar.xz) or zip archive")


def _find_root(tree: FileTree, src: Path) -> str:
    """The folder holding the splits: the prefix under which most images sit at <split>/<class>/<image>."""
    counts = Counter()
    for rel in tree.files:
        parts = rel.split("/")
        if len(parts) >= 3 and _is_image_name(parts[-1]) and not _hidden(rel):
            counts["/".join(parts[:-3])] += 1
    if not counts:
        raise DataError(f"{src}: no images laid out as <split>/<class>/<image> (e.g. train/cat/0001.jpg)")
    return max(counts, key=lambda prefix: (counts[prefix], -len(prefix)))


def _split_rank(name: str) -> tuple[int, str]:
    """Sort key putting train, then test, first and other splits after them by name."""
    return (SPLIT_ORDER.index(name) if name in SPLIT_ORDER else len(SPLIT_ORDER), name)


def _hidden(rel: str) -> bool:
    """True for dot-files, files in dot-folders and macOS resource forks, which are not data."""
    rel = "/" + rel
    return "/." in rel or "/__MACOSX/" in rel


def _is_image_name(name: str) -> bool:
    """True when a file name ends in a known image suffix (case-insensitive)."""
    dot = name.rfind(".")
    return dot > 0 and name[dot:].lower() in IMAGE_SUFFIXES


def read_imagefolder(src: str | Path) -> Source:
    """Read <root>/<split>/<class>/<image> from a directory or archive; "val" becomes "test" when there is no test.

    Class names are the sorted class folder names of train (of all splits when there is no
    train); a classes.txt beside the splits with "<folder> <description>" lines adds human names
    to the provenance. Non-image files are ignored and counted.
    """
    src = Path(src)
    tree = open_file_tree(src)
    root = _find_root(tree, src)
    prefix = root + "/" if root else ""
    images: dict[str, dict[str, list[str]]] = {}  # split folder -> class -> [relative paths]
    split_folders = {d[len(prefix):].split("/")[0] for d in tree.dirs
                     if d.startswith(prefix) and d != root and not _hidden(d)}
    ignored = 0
    for rel in tree.files:
        if not rel.startswith(prefix):
            continue
        parts = rel[len(prefix):].split("/")
        hidden = _hidden(rel)
        if len(parts) >= 2 and not hidden:
            split_folders.add(parts[0])
        if len(parts) == 3 and not hidden and _is_image_name(parts[2]):
            images.setdefault(parts[0], {}).setdefault(parts[1], []).append(rel)
        elif len(parts) > 1:
            ignored += 1
    empty = sorted(split_folders - set(images))
    if empty:
        raise DataError(f"{tree.display(prefix + empty[0])}: split folder has no images "
                        f"(expected {empty[0]}/<class>/<image>); remove it or add images")
    class_names = sorted(images["train"] if "train" in images else {c for s in images.values() for c in s})
    label_of = {name: i for i, name in enumerate(class_names)}
    split_map = {"val": "test"} if "val" in images and "test" not in images else {}
    ordered = sorted(images, key=lambda folder: _split_rank(split_map.get(folder, folder)))
    splits = []
    for folder in ordered:
        unknown = sorted(set(images[folder]) - set(label_of))
        if unknown:
            raise DataError(f"{tree.display(prefix + folder + '/' + unknown[0])}: class folder not in train's "
                            f"classes ({len(class_names)} of them); rename or remove it")
        items = [ImageItem(tree.display(rel), tree.files[rel], label_of[cls])
                 for cls in sorted(images[folder]) for rel in sorted(images[folder][cls])]
        splits.append(SplitSource(split_map.get(folder, folder), items, _imagefolder_decoder(tree), len(items),
                                  read=lambda item, read=tree.read: read(item.handle)))
    provenance = {"src": str(src), "src_resolved": str(src.resolve()), "root_in_src": root,
                  "split_map": split_map, "ignored_files": ignored}
    descriptions = _class_descriptions(tree, prefix + "classes.txt", class_names)
    if descriptions:
        provenance["class_descriptions"] = descriptions
    return Source("imagefolder", splits, class_names, {"rgb"}, provenance)


def _imagefolder_decoder(tree: FileTree) -> Callable[[ImageItem], dict | None]:
    """decode(item) for a file tree: its image as a record, or None when unreadable."""
    def decode(item: ImageItem) -> dict | None:
        image = decode_image(tree.read(item.handle))
        return None if image is None else {"rgb": image, "label": item.label}
    return decode


def _class_descriptions(tree: FileTree, rel: str, class_names: list[str]) -> list[str] | None:
    """Human names from a "<folder> <description>" classes.txt, aligned with class_names ("" when absent)."""
    if rel not in tree.files:
        return None
    text = bytes(tree.read(tree.files[rel])).decode("utf-8", "replace")
    pairs = dict(line.split(None, 1) for line in text.splitlines() if len(line.split(None, 1)) == 2)
    return [pairs.get(name, "").strip() for name in class_names]


# ----------------------------------------------------------------------------- torchvision layouts

@dataclass(frozen=True)
class CifarLayout:
    """Where torchvision keeps one CIFAR variant and what its pickles call things."""

    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str
    names_key: str
    torchvision_class: str


CIFAR = {
    "cifar10": CifarLayout("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
                           "batches.meta", "labels", "label_names", "CIFAR10"),
    "cifar100": CifarLayout("cifar-100-python", ("train",), ("test",), "meta", "fine_labels", "fine_label_names",
                            "CIFAR100"),
}


def _download(torchvision_class: str, root: Path, **kwargs) -> None:
    """Fetch a dataset into `root` with torchvision (checksummed); any failure becomes one DataError."""
    import torchvision.datasets

    try:
        getattr(torchvision.datasets, torchvision_class)(root=str(root), download=True, **kwargs)
    except Exception as e:  # network, disk or checksum trouble: all the user can act on is the message
        raise DataError(f"{root}: downloading {torchvision_class} failed ({e}); check the network or fetch it "
                        f"by hand") from None


def _numpy_reconstruct():
    """numpy's array-unpickling helper (numpy.core.multiarray._reconstruct; numpy 2 moved it to numpy._core)."""
    core = getattr(np, "_core", None) or np.core
    return core.multiarray._reconstruct


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """_codecs.encode as protocol-2 pickles use it (bytes stored as latin-1 text); no other codec is run."""
    if not isinstance(text, str) or encoding.lower().replace("-", "").replace("_", "") != "latin1":
        raise pickle.UnpicklingError(f"it encodes with {encoding!r}, which no CIFAR batch does; refused")
    return text.encode("latin1")


class CifarUnpickler(pickle.Unpickler):
    """Unpickles only what CIFAR's python batches hold: dicts, lists, str/bytes, numbers and numpy arrays.

    A plain pickle.load runs whatever a crafted file names (os.system, ...); here every global
    other than the three that rebuild a numpy array (and latin-1 bytes of protocol 2) is refused
    before anything is called.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy", "ndarray"): lambda: np.ndarray,
        ("numpy", "dtype"): lambda: np.dtype,
        ("_codecs", "encode"): lambda: _latin1_bytes,  # how Python 3 writes bytes at protocol 2
    }

    def find_class(self, module: str, name: str):
        make = self.ALLOWED.get((module, name))
        if make is None:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which no CIFAR batch holds; refused unread")
        return make()


def _load_pickle(path: Path, folder_hint: str) -> dict:
    """Load one CIFAR pickle (restricted: see CifarUnpickler) as a dict with str keys."""
    if not path.is_file():
        raise DataError(f"{path}: missing; expected torchvision's {folder_hint} layout (pass --download to fetch it)")
    try:
        with open(path, "rb") as f:
            entry = CifarUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError, IndexError, KeyError,
            MemoryError, RecursionError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a CIFAR pickle ({type(e).__name__}: {e}); download it again") from None
    if not isinstance(entry, dict):
        raise DataError(f"{path}: not a CIFAR pickle (holds a {type(entry).__name__}, not a dict); download it again")
    for value in entry.values():
        if isinstance(value, np.ndarray) and value.dtype.hasobject:
            raise DataError(f"{path}: not a CIFAR pickle (an array of Python objects); download it again")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}


def _cifar_split(paths: list[Path], layout: CifarLayout, num_classes: int, name: str) -> SplitSource:
    """Concatenate a split's pickled batches into one (N, 32, 32, 3) view and its labels."""
    data, labels = [], []
    for path in paths:
        entry = _load_pickle(path, layout.folder)
        try:
            rows = np.asarray(entry["data"], dtype=np.uint8)
            batch_labels = np.asarray(entry[layout.label_key], dtype=np.int64)
        except KeyError as e:
            raise DataError(f"{path}: CIFAR pickle has no {e.args[0]!r} entry; download it again") from None
        except (ValueError, TypeError, OverflowError) as e:
            raise DataError(f"{path}: CIFAR pickle holds no image rows and labels ({e}); download it again") from None
        if rows.ndim != 2 or rows.shape[1] != 3072 or len(batch_labels) != len(rows):
            raise DataError(f"{path}: data is {rows.shape} with {len(batch_labels)} labels, expected (N, 3072) and N")
        if len(batch_labels) and not 0 <= batch_labels.min() <= batch_labels.max() < num_classes:
            raise DataError(f"{path}: labels outside 0..{num_classes - 1}")
        data.append(rows)
        labels.append(batch_labels)
    images = np.concatenate(data).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # (N, 32, 32, 3), rows R, G, B planes
    labels = np.concatenate(labels)
    return SplitSource(name, range(len(labels)), lambda i: {"rgb": images[i], "label": int(labels[i])}, len(labels))


def _read_cifar(kind: str, root: str | Path, download: bool) -> Source:
    layout = CIFAR[kind]
    root = Path(root)
    if download:
        _download(layout.torchvision_class, root, train=True)
    folder = root if (root / layout.meta_file).is_file() else root / layout.folder
    if not folder.is_dir():
        raise DataError(f"{root}: no {layout.folder} folder (torchvision's layout); pass --download to fetch it")
    names = _load_pickle(folder / layout.meta_file, layout.folder).get(layout.names_key, [])
    class_names = [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names] \
        if isinstance(names, (list, tuple)) else []
    if not class_names:
        raise DataError(f"{folder / layout.meta_file}: no {layout.names_key!r} entry; download it again")
    splits = [_cifar_split([folder / f for f in files], layout, len(class_names), name)
              for name, files in (("train", layout.train_files), ("test", layout.test_files))]
    return Source(kind, splits, class_names, {"rgb"}, {"src": str(root), "src_resolved": str(folder.resolve())})


def read_cifar10(root: str | Path, download: bool = False) -> Source:
    """CIFAR-10 from torchvision's root (holding cifar-10-batches-py), downloading it first if asked."""
    return _read_cifar("cifar10", root, download)


def read_cifar100(root: str | Path, download: bool = False) -> Source:
    """CIFAR-100 (fine labels) from torchvision's root (holding cifar-100-python), downloading it first if asked."""
    return _read_cifar("cifar100", root, download)


STL10_SIDE = 96
STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]


def _stl10_split(folder: Path, name: str, labelled: bool) -> SplitSource:
    """One STL-10 split: memory-mapped images (column-major planes) and 1-based labels made 0-based."""
    path = folder / f"{name}_X.bin"
    image_bytes = 3 * STL10_SIDE * STL10_SIDE
    size = path.stat().st_size
    if size == 0 or size % image_bytes:
        raise DataError(f"{path}: {size} bytes is not a whole number of 3x96x96 images; truncated? download it again")
    images = np.memmap(path, np.uint8, "r").reshape(-1, 3, STL10_SIDE, STL10_SIDE)  # (N, C, column, row)
    labels = np.full(len(images), -1, np.int64)
    if labelled:
        label_path = folder / f"{name}_y.bin"
        if not label_path.is_file():
            raise DataError(f"{label_path}: missing; expected torchvision's stl10_binary layout")
        labels = np.fromfile(label_path, np.uint8).astype(np.int64) - 1
        if len(labels) != len(images) or (len(labels) and not 0 <= labels.min() <= labels.max() < 10):
            raise DataError(f"{label_path}: {len(labels)} labels in 1..10 expected for the {len(images)} images")
    decode = lambda i: {"rgb": images[i].transpose(2, 1, 0), "label": int(labels[i])}  # noqa: E731 (H, W, C)
    return SplitSource(name, range(len(images)), decode, len(images))


def read_stl10(root: str | Path, download: bool = False) -> Source:
    """STL-10 from torchvision's root (holding stl10_binary): train, test, and unlabeled (label -1) when present."""
    root = Path(root)
    if download:
        _download("STL10", root, split="train")
    folder = root if (root / "train_X.bin").is_file() else root / "stl10_binary"
    for needed in ("train_X.bin", "test_X.bin"):
        if not (folder / needed).is_file():
            raise DataError(f"{folder / needed}: missing; expected torchvision's stl10_binary layout "
                            f"(pass --download to fetch it)")
    names_file = folder / "class_names.txt"
    class_names = read_text(names_file).split() if names_file.is_file() else list(STL10_CLASSES)
    splits = [_stl10_split(folder, "train", True), _stl10_split(folder, "test", True)]
    if (folder / "unlabeled_X.bin").is_file():
        splits.append(_stl10_split(folder, "unlabeled", False))
    return Source("stl10", splits, class_names, {"rgb"}, {"src": str(root), "src_resolved": str(folder.resolve())})
