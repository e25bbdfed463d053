"""Find the scans of an archive for ``medsi batch`` (DESIGN.md section 5).

An archive is a folder tree holding NIfTI files (``.nii``, ``.nii.gz``) and DICOM files in
any layout. Every NIfTI file is one scan. DICOM files are grouped into series by their
SeriesInstanceUID wherever they lie: a series split across folders is one scan, and a
series found twice (the same SOPInstanceUIDs in two places, e.g. a copied study folder) is
one scan read from its first copy, with a note. Only DICOM headers are read here
(``stop_before_pixels``); the pixels are read later by
:func:`medsi.transforms.io.load_scan`, the one DICOM reader of medsi. Files that are
neither NIfTI nor DICOM images are listed as skipped, not treated as errors.

Each scan gets an identifier that names its output folder. It is built from safe
characters only (``a-z``, ``0-9``, ``_``) and a hash of what identifies the scan, never
from a raw DICOM tag value or path, so no tag (``../../evil``) can lead outside the output
folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path

from medsi.errors import ConfigError
from medsi.transforms.io._common import one_line
from medsi.transforms.io._dicom_read import _NOT_SOURCE  # the reader's list, kept in one place

__all__ = [
    "ScanSource",
    "SkippedFile",
    "ArchiveListing",
    "find_scans",
    "safe_identifier",
    "NIFTI_SUFFIXES",
]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
"""File name endings (any case) read as NIfTI scans."""

_ID_STEM_CHARS = 40  # readable part of an identifier; the hash keeps it unique
_ID_HASH_CHARS = 10  # 40 bits: a collision among a million scans has odds of about 1 in 2000

# Only these header fields are needed to group files; reading just them keeps the walk fast.
_HEADER_TAGS = [
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SeriesNumber",
    "SeriesDescription",
    "Modality",
    "Rows",
]


@dataclasses.dataclass(frozen=True)
class ScanSource:
    """One scan of the archive: what to pass to the analysis, and where it came from.

    Attributes
    ----------
    scan_id
        Safe identifier, the name of the scan's output folder (see :func:`safe_identifier`).
    kind
        ``"nifti"`` or ``"dicom"``.
    label
        Where the scan lies, for people: the NIfTI file, or the series' folders (joined by
        ``"; "``), relative to the archive.
    files
        The files that make up the scan, absolute, sorted (duplicate copies left out).
    location
        The NIfTI file; for a DICOM series the deepest folder holding all its files; for
        an unreadable DICOM file, the file.
    direct
        Whether :func:`medsi.pipeline.run.analyse_scan` can read the scan from
        ``location`` as it is. False for a series whose folder also holds another copy of
        it, an unreadable DICOM file or an excluded folder: its files must first be
        gathered into a folder of their own.
    series_instance_uid
        The DICOM series (None for NIfTI); passed as ``series=`` so that other series in
        the same folder are left alone.
    notes
        What was noticed while grouping, in words (split folders, duplicate copies).
    error
        Set when the scan cannot be analysed at all (a DICOM file whose header cannot be
        read): the message says which file and what to do. The batch records it as failed.
    """

    scan_id: str
    kind: str
    label: str
    files: tuple[Path, ...]
    location: Path
    direct: bool
    series_instance_uid: str | None = None
    notes: tuple[str, ...] = ()
    error: str | None = None

    def fingerprint(self, root: Path) -> str:
        """sha256 over the files' names (relative to ``root``), sizes and modification times.

        A re-run analyses a scan again when this changes (a file was replaced or added);
        an archive moved as a whole keeps its fingerprints.
        """
        digest = hashlib.sha256()
        for file in self.files:
            name = _relative(file, root)
            try:
                stat = file.stat()
                facts = f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n"
            except OSError:
                facts = f"{name}\0missing\n"
            digest.update(facts.encode("utf-8", "surrogateescape"))
        return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class SkippedFile:
    """A file of the archive that is not (part of) a scan.

    Attributes
    ----------
    path
        Relative to the archive, POSIX style.
    reason
        Why it was skipped, in words.
    """

    path: str
    reason: str


@dataclasses.dataclass(frozen=True)
class ArchiveListing:
    """What :func:`find_scans` found.

    Attributes
    ----------
    root
        The archive folder, absolute.
    scans
        One :class:`ScanSource` per scan, sorted by ``scan_id``.
    skipped
        Files that are not scans, sorted by path.
    """

    root: Path
    scans: tuple[ScanSource, ...]
    skipped: tuple[SkippedFile, ...]


def safe_identifier(text: str, key: str) -> str:
    """A folder name made of ``text``'s safe characters and a short hash of ``key``.

    ``text`` is folded to ASCII and lower case; every run of characters other than
    ``a-z`` and ``0-9`` becomes one ``_`` (so dots, slashes and backslashes never
    survive), and only its last 40 characters are kept. The first 10 hex digits of the
    sha256 of ``key`` follow after a ``-``, so two scans with the same text still get two
    folders, and the same scan always gets the same one.

    Parameters
    ----------
    text
        Something readable about the scan (a file name, a series description); may hold
        anything.
    key
        What identifies the scan uniquely (its path in the archive, its SeriesInstanceUID).

    Returns
    -------
    str
        Matches ``[a-z0-9_]*-[0-9a-f]{10}`` and never starts with ``.``; e.g.
        ``"evil-c47f5b18b8"`` for ``"../../evil"`` and key ``"1.2.3"``.

    Examples
    --------
    >>> safe_identifier("../../evil", "1.2.3")
    'evil-c47f5b18b8'
    >>> safe_identifier("", "x")
    'scan-2d711642b7'
    """
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    stem = re.sub(r"[^a-z0-9]+", "_", ascii_text.lower()).strip("_")
    stem = stem[-_ID_STEM_CHARS:].strip("_") or "scan"
    digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()
    return f"{stem}-{digest[:_ID_HASH_CHARS]}"


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def _walk(root: Path, excluded: Sequence[Path]) -> tuple[list[Path], list[Path]]:
    """All files under ``root`` (sorted), and the excluded folders met on the way."""
    files: list[Path] = []
    pruned: list[Path] = []
    for folder, dirnames, filenames in os.walk(root):
        here = Path(folder)
        kept_dirs = []
        for name in sorted(dirnames):
            child = here / name
            if any(child.resolve() == e for e in excluded):
                pruned.append(child)
            else:
                kept_dirs.append(name)
        dirnames[:] = kept_dirs  # os.walk descends only into what is left
        files.extend(here / name for name in sorted(filenames))
    return files, pruned


@dataclasses.dataclass
class _Image:
    path: Path
    sop_instance_uid: str
    series_description: str
    series_number: str


def _read_header(path: Path) -> tuple[str, object]:
    """Classify one file: ``("image", (uid, _Image))``, ``("skip", why)`` or ``("broken", why)``."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
    except InvalidDicomError:
        return "skip", "neither NIfTI (.nii, .nii.gz) nor DICOM"
    except Exception as e:  # a DICOM preamble followed by a damaged header
        return "broken", f"{type(e).__name__}: {one_line(e)}"
    uid = str(ds.get("SeriesInstanceUID", "") or "")
    if "Rows" not in ds or not uid or str(ds.get("SOPClassUID", "")) in _NOT_SOURCE:
        return "skip", "a DICOM object that is not an image of a series (e.g. DICOMDIR, SR, SEG)"
    image = _Image(
        path=path,
        sop_instance_uid=str(ds.get("SOPInstanceUID", "") or ""),
        series_description=str(ds.get("SeriesDescription", "") or ""),
        series_number=str(ds.get("SeriesNumber", "") or ""),
    )
    return "image", (uid, image)


def _under(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _series_source(
    uid: str,
    images: list[_Image],
    root: Path,
    broken: Sequence[Path],
    pruned: Sequence[Path],
) -> ScanSource:
    """One DICOM series: drop duplicate copies, choose the folder to read it from."""
    kept: list[_Image] = []
    duplicates: list[_Image] = []
    seen: set[str] = set()
    for image in sorted(images, key=lambda i: i.path):
        if image.sop_instance_uid and image.sop_instance_uid in seen:
            duplicates.append(image)
        else:
            seen.add(image.sop_instance_uid)
            kept.append(image)
    folders = sorted({i.path.parent for i in kept})
    common = Path(os.path.commonpath([str(f) for f in folders]))

    # The reader takes every file under the folder it is given: read from `common` only
    # when nothing there would confuse it (another copy of this series, an unreadable
    # DICOM header, a folder the walk left out such as the batch's own output).
    clean = not any(_under(p, common) for p in [*(d.path for d in duplicates), *broken, *pruned])
    first = kept[0]
    text = " ".join(t for t in (first.series_number, first.series_description) if t)
    notes = []
    places = ", ".join(f'"{_relative(f, root)}"' for f in folders[:5])
    if len(folders) > 1:
        more = f" and {len(folders) - 5} more" if len(folders) > 5 else ""
        notes.append(
            f"series spread over {len(folders)} folders ({places}{more}): read as one scan"
        )
    if duplicates:
        copies = sorted({_relative(i.path.parent, root) for i in duplicates})
        listing = ", ".join(f'"{c}"' for c in copies[:5])
        notes.append(
            f"series found more than once: {len(duplicates)} file(s) in {listing} repeat "
            f"SOPInstanceUIDs of the copy in {places}, which was used"
        )
    return ScanSource(
        scan_id=safe_identifier(text or "series", uid),
        kind="dicom",
        label="; ".join(_relative(f, root) for f in folders),
        files=tuple(i.path for i in kept),
        location=common,
        direct=clean,
        series_instance_uid=uid,
        notes=tuple(notes),
    )


def find_scans(
    archive: str | os.PathLike, exclude: Iterable[str | os.PathLike] = ()
) -> ArchiveListing:
    """List the scans of an archive: NIfTI files and DICOM series, wherever they lie.

    Parameters
    ----------
    archive
        The archive folder.
    exclude
        Folders not to look into (the batch passes its output folder, in case it lies
        inside the archive).

    Returns
    -------
    ArchiveListing
        Scans sorted by identifier; skipped files with the reason. A DICOM file whose
        header cannot be read becomes a scan of its own with ``error`` set, so the batch
        reports it as failed instead of dropping it silently.

    Raises
    ------
    ConfigError
        If ``archive`` is not a folder.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "readme.txt").write_text("hello")
    >>> listing = find_scans(folder)
    >>> listing.scans, [s.path for s in listing.skipped]
    ((), ['readme.txt'])
    """
    root = Path(archive).resolve()
    if not root.is_dir():
        raise ConfigError(
            f'"archive" must be a folder of NIfTI files and DICOM series, got "{archive}", '
            f"which is {'a file' if root.exists() else 'missing'}; pass the archive's folder."
        )
    excluded = [Path(e).resolve() for e in exclude]
    files, pruned = _walk(root, excluded)

    scans: list[ScanSource] = []
    skipped: list[SkippedFile] = []
    series: dict[str, list[_Image]] = {}
    broken: list[Path] = []
    for path in files:
        if _is_nifti(path):
            relative = _relative(path, root)
            stem = re.sub(r"\.nii(\.gz)?$", "", relative, flags=re.IGNORECASE)
            scans.append(
                ScanSource(
                    scan_id=safe_identifier(stem, f"nifti:{relative}"),
                    kind="nifti",
                    label=relative,
                    files=(path,),
                    location=path,
                    direct=True,
                )
            )
            continue
        kind, value = _read_header(path)
        if kind == "skip":
            skipped.append(SkippedFile(_relative(path, root), str(value)))
        elif kind == "broken":
            broken.append(path)
            relative = _relative(path, root)
            scans.append(
                ScanSource(
                    scan_id=safe_identifier(Path(relative).name, f"broken-dicom:{relative}"),
                    kind="dicom",
                    label=relative,
                    files=(path,),
                    location=path,
                    direct=False,
                    error=(
                        f'"{path}" starts like a DICOM file but its header could not be read '
                        f"({value}); the series it belongs to cannot be known; copy or export "
                        "the file again, or remove it."
                    ),
                )
            )
        else:
            uid, image = value
            series.setdefault(uid, []).append(image)
    for uid, images in series.items():
        scans.append(_series_source(uid, images, root, broken, pruned))

    scans.sort(key=lambda s: s.scan_id)
    seen_ids: set[str] = set()
    for index, scan in enumerate(scans):
        if scan.scan_id in seen_ids:  # two keys sharing 40 bits of hash: make it unique
            unique = safe_identifier(scan.scan_id, f"{scan.scan_id}:{index}:{scan.label}")
            scans[index] = dataclasses.replace(scan, scan_id=unique)
        seen_ids.add(scans[index].scan_id)
    scans.sort(key=lambda s: s.scan_id)
    skipped.sort(key=lambda s: s.path)
    return ArchiveListing(root=root, scans=tuple(scans), skipped=tuple(skipped))
