"""`crossmodal prepare SOURCE SRC --out FILE.h5`: raw data -> one prepared HDF5 file."""
from __future__ import annotations

import os
import time
from pathlib import Path

import click

from cli.options import apply_options

DEFAULT_WORKERS = min(8, os.cpu_count() or 1)


def common_options(command):
    """The options every source shares (output, modalities, resizing, workers, strictness)."""
    options = [
        click.option("--out", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path),
                     help="Prepared HDF5 file to write. Its folder must exist; the file appears only when complete."),
        click.option("--modalities", "-m", default=None, metavar="LIST",
                     help="Comma-separated modalities to store, e.g. rgb,L,ab. L and ab (CIE Lab) are derived "
                          "from rgb. [default: every modality the source can give]"),
        click.option("--size", type=click.IntRange(min=1), default=None, metavar="N",
                     help="Resize the shorter side to N, then centre-crop NxN. Images: area-averaged when "
                          "shrinking, bilinear when enlarging; segmentation: nearest; depth: valid-aware "
                          "(each pixel averages only measured depths). Needed when images differ in size."),
        click.option("--encoding", type=click.Choice(["raw", "jpeg", "png"]), default="raw", show_default=True,
                     help="How rgb is stored. raw: (N, 3, H, W) arrays, fastest to read, for small images. jpeg/png: "
                          "one encoded image per row, decoded by the loader (L and ab are then derived from rgb "
                          "there); JPEG sources are stored unchanged unless resized or --reencode. Images may "
                          "differ in size."),
        click.option("--max-side", type=click.IntRange(min=1), default=None, metavar="N",
                     help="With --encoding: shrink images whose longer side exceeds N to longer side N (aspect "
                          "kept; JPEGs decoded at reduced size by libjpeg) and re-encode them."),
        click.option("--quality", type=click.IntRange(1, 100), default=90, show_default=True,
                     help="JPEG quality of images that --encoding jpeg re-encodes (sources already JPEG and not "
                          "resized keep their bytes, unless --reencode)."),
        click.option("--reencode", is_flag=True,
                     help="With --encoding jpeg: re-encode JPEG sources too (decoded and encoded with OpenCV at "
                          "--quality and --subsampling) instead of keeping their bytes, to make the file smaller."),
        click.option("--subsampling", type=click.Choice(["420", "444"]), default=None,
                     help="With --encoding jpeg: chroma sampling of the JPEGs prepare encodes or re-encodes. 420 "
                          "halves the colour resolution (smaller; OpenCV's default), 444 keeps it whole (15-20% "
                          "larger; for data whose colour matters, e.g. an ab student). Kept source bytes keep "
                          "their own. [default: 420]"),
        click.option("--only-splits", default=None, metavar="LIST",
                     help="Comma-separated splits to keep, e.g. train,test to skip STL-10's 100,000 unlabeled "
                          "images. [default: all]"),
        click.option("--workers", "-j", type=click.IntRange(min=1), default=DEFAULT_WORKERS, show_default=True,
                     help="Decoding threads (OpenCV and HDF5 release the GIL); with --encoding, processes."),
        click.option("--strict", is_flag=True,
                     help="Stop at the first unreadable image instead of skipping it (skips are warned about and "
                          "counted in the file's provenance)."),
        click.option("--force", is_flag=True,
                     help="Overwrite --out if it exists (only once the new file is complete)."),
    ]
    return apply_options(options, command)


def _split_list(text: str | None) -> list[str] | None:
    """"a, b" -> ["a", "b"]; None stays None."""
    return None if text is None else [part.strip() for part in text.split(",") if part.strip()]


def _write(source, src: Path, out: Path, modalities: str | None, size: int | None, only_splits: str | None,
           workers: int, strict: bool, force: bool, encoding: str = "raw", max_side: int | None = None,
           quality: int = 90, reencode: bool = False, subsampling: str | None = None) -> None:
    """Filter splits, record SRC and the command line, write the file and print a one-line summary."""
    from crossmodal.errors import ConfigError
    from data_prep.writer import write_prepared

    keep = _split_list(only_splits)
    if keep is not None:
        unknown = sorted(set(keep) - {s.name for s in source.splits})
        if unknown:
            raise ConfigError(f"--only-splits: {source.name} has no split {unknown[0]!r} "
                              f"(it has: {', '.join(s.name for s in source.splits)})")
        source.splits = [s for s in source.splits if s.name in keep]
    source.provenance.setdefault("src", str(src))  # error messages name it
    ctx = click.get_current_context()
    source.provenance["cli"] = {"command": ctx.command_path,
                                **{k: None if v is None else str(v) for k, v in ctx.params.items()}}
    started = time.perf_counter()
    summary = write_prepared(source, out, _split_list(modalities), size=size, force=force, workers=workers,
                             strict=strict, encoding=encoding, max_side=max_side, quality=quality,
                             reencode=reencode, subsampling=subsampling)
    seconds = time.perf_counter() - started
    counts = summary["provenance"]["counts"]
    skipped = sum(summary["provenance"]["skipped"].values())
    total = sum(counts.values())
    stored = summary["provenance"]["arguments"]["modalities"]
    click.echo(f"wrote {out}: " + ", ".join(f"{name} {n}" for name, n in counts.items())
               + f" ({', '.join(stored)}; {skipped} skipped) in {seconds:.1f} s, "
               f"{total / max(seconds, 1e-9):,.0f} images/s")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def prepare():
    """Convert raw data into one prepared HDF5 file that teach, distill and probe read.

    \b
    crossmodal prepare imagefolder data/cifar10.tar.gz --out cifar10.h5
    crossmodal prepare stl10 ~/torchvision-data --out stl10.h5 --download
    crossmodal prepare rgbd data/nyu18 --out nyu18.h5 --labels label13 --size 240

    The file holds a group per split (train, test, unlabeled, ...), one (N, C, H, W) dataset per
    modality (rgb uint8; L, ab float16 CIE Lab; depth float32 metres with depth_valid; hha),
    labels (-1 = none), optional segmentation, and attributes: class names, per-channel mean/std
    over the train split (depth over valid pixels), and provenance (source, arguments, counts,
    skipped files, version, time). Chunks are one sample each and uncompressed: natural images
    barely compress and decompressing would slow every training step. With --encoding jpeg|png
    rgb is stored as one encoded image per row instead (ImageNet-sized data) and decoded by the
    loader.

    The file is written under a temporary name in the output folder and renamed when complete;
    on any error or Ctrl-C nothing is left behind. Errors exit with status 2, Ctrl-C with 130.
    """


@prepare.command("imagefolder")
@click.argument("src", type=click.Path(path_type=Path))
@common_options
def imagefolder(src: Path, **options):
    """Images laid out SRC/<split>/<class>/<image>.

    SRC is a folder or an archive (.tar, .tar.gz/.tgz, .tar.bz2, .tar.xz, .zip), read without
    unpacking; a single top folder inside it (cifar10/train/...) is found by itself. Splits are
    the folders beside train; val is stored as test when there is no test. Class names are the
    sorted class folders of train; a classes.txt beside the splits with "<folder> <name>" lines
    (e.g. Tiny ImageNet's wnids) adds human names to the provenance. Unreadable images are
    skipped with a warning (see --strict); non-image files are ignored.
    """
    from data_prep.images import read_imagefolder

    _write(read_imagefolder(src), src, **options)


def _torchvision_command(name: str, reader: str, layout: str):
    """A subcommand for a dataset in torchvision's on-disk layout, with --download."""
    @click.argument("src", type=click.Path(file_okay=False, path_type=Path))
    @common_options
    @click.option("--download", is_flag=True,
                  help=f"Fetch {name} into SRC with torchvision first (checksummed; skipped when already there).")
    def command(src: Path, download: bool, **options):
        from data_prep import images

        _write(getattr(images, reader)(src, download=download), src, **options)

    command.__doc__ = f"{name} from torchvision's on-disk files.\n\n    Layout: {layout}."
    return command


prepare.command("cifar10")(_torchvision_command(
    "CIFAR-10", "read_cifar10", "SRC/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}"))
prepare.command("cifar100")(_torchvision_command(
    "CIFAR-100", "read_cifar100", "SRC/cifar-100-python/{train,test,meta}; fine labels"))
prepare.command("stl10")(_torchvision_command(
    "STL-10", "read_stl10", "SRC/stl10_binary/{train,test,unlabeled}_X.bin (96x96, column-major) and "
    "*_y.bin; the unlabeled split gets label -1 (leave it out with --only-splits train,test)"))


@prepare.command("rgbd")
@click.argument("src", type=click.Path(path_type=Path))
@click.option("--split-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Text file assigning frames to splits (like nyu18/split.txt).")
@click.option("--labels", "label_dir", default=None, metavar="DIR",
              help="Folder of segmentation PNGs inside SRC (e.g. label13; 0 = unlabeled pixel).")
@common_options
def rgbd(src: Path, split_file: Path | None, label_dir: str | None, **options):
    """RGB-D frames in folders, like nyu18.

    Layout: SRC/rgb/NNNN.png, SRC/depth/NNNN.png (uint16 millimetres), optional SRC/hha/.
    """
    from data_prep.rgbd import read_rgbd

    _write(read_rgbd(src, split_file=split_file, label_dir=label_dir), src, **options)


@prepare.command("nyu")
@click.argument("src", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--splits", "splits_mat", type=click.Path(dir_okay=False, path_type=Path), default=None,
              metavar="FILE.mat", help="NYU's splits.mat holding the official train/test frame indices.")
@click.option("--class-mapping", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="FILE.mat",
              help="A .mat with mapClass (and className) folding NYU's raw classes into fewer, e.g. 13 or 40.")
@common_options
def nyu(src: Path, splits_mat: Path | None, class_mapping: Path | None, **options):
    """NYU-Depth-V2's labeled set from its MATLAB file.

    SRC is nyu_depth_v2_labeled.mat (MATLAB v7.3, 2.8 GB, read with h5py).
    """
    from data_prep.nyu import read_nyu_mat

    _write(read_nyu_mat(src, splits_mat=splits_mat, class_mapping=class_mapping), src, **options)
