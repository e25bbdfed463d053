import io
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Orientationd
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless

import medsi.assets
from medsi.errors import ConfigError, InputDataError
from medsi.transforms.io import (
    CARRIED_ATTRIBUTES,
    LoadScan,
    LoadScand,
    load_dicom_series,
    load_nifti,
    load_scan,
    mask_nonfinite,
    write_dicom_series,
)

EXAMPLE = Path(medsi.assets.__file__).parent / "examples" / "S0_10slices.nii.gz"
SHAPE = (12, 10, 9)
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


# ----------------------------------------------------------------------------- helpers


def oblique_affine(flip_slices: bool = False) -> np.ndarray:
    """RAS+ affine: rotated about two axes, anisotropic voxels, away from the origin."""
    a, b = math.radians(20), math.radians(-12)
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ np.diag([0.9, 1.1, 2.5 * (-1 if flip_slices else 1)])
    affine[:3, 3] = [-40.5, 22.25, 13.0]
    return affine


def stored_values(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-200, 1500, SHAPE).astype(np.int16)


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray, **fields) -> Path:
    """Save with nibabel, then set raw header fields (scl_slope, quatern_b, ...) as given."""
    nib.save(nib.Nifti1Image(data, affine), path)
    if fields:
        assert path.suffix == ".nii"
        blob = path.read_bytes()
        header = nib.Nifti1Header.from_fileobj(io.BytesIO(blob))
        for name, value in fields.items():
            header[name] = value
        path.write_bytes(header.binaryblock + blob[len(header.binaryblock) :])
    return path


def edit_dicom(path: Path, change) -> None:
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path)


def ras_to_lps_direction(affine: np.ndarray, column: int) -> np.ndarray:
    vector = (LPS_TO_RAS @ affine)[:3, column]
    return vector / np.linalg.norm(vector)


@pytest.fixture
def series(tmp_path) -> tuple[Path, np.ndarray, np.ndarray, list[Path]]:
    """A DICOM series of values stored * 0.5 - 10, files renamed out of slice order."""
    values = stored_values() * 0.5 - 10
    affine = oblique_affine()
    paths = write_dicom_series(values, affine, tmp_path / "dcm", rescale=(0.5, -10))
    order = np.random.default_rng(1).permutation(len(paths))
    renamed = []
    for path, new in zip(paths, order, strict=True):
        renamed.append(path.rename(path.with_name(f"IM{new:03d}")))
    return tmp_path / "dcm", values, affine, renamed


@pytest.fixture
def strict_dicom():
    previous = pydicom.config.settings.reading_validation_mode
    pydicom.config.settings.reading_validation_mode = pydicom.config.RAISE
    yield
    pydicom.config.settings.reading_validation_mode = previous


# ----------------------------------------------------------------------------- NIfTI


def test_example_scan_loads_as_3d():
    image, valid = LoadScan()(EXAMPLE)
    reference = nib.load(EXAMPLE)
    assert isinstance(image, MetaTensor) and tuple(image.shape) == (1, 128, 128, 10)
    assert image.dtype == torch.float32 and valid.dtype == torch.bool and bool(valid.all())
    np.testing.assert_allclose(image.affine.numpy(), reference.affine, atol=1e-6)
    np.testing.assert_array_equal(image[0].numpy(), reference.get_fdata()[..., 0])
    meta = image.meta
    assert meta["source_format"] == "nifti" and meta["filename_or_obj"] == str(EXAMPLE)
    assert tuple(meta["spatial_shape"]) == (128, 128, 10) and meta["nonfinite_voxels"] == 0
    np.testing.assert_allclose(meta["original_affine"], reference.affine)
    assert any("read as a 3-D volume" in note for note in meta["notes"])


def test_nifti_3d_gz_keeps_values_and_affine(tmp_path):
    data = np.random.default_rng(2).normal(size=SHAPE).astype(np.float32)
    path = tmp_path / "t1.nii.gz"
    nib.save(nib.Nifti1Image(data, oblique_affine()), path)
    scan = load_scan(path)
    np.testing.assert_array_equal(scan.array, data)
    np.testing.assert_allclose(scan.affine, oblique_affine(), atol=1e-6)
    assert scan.meta["affine_source"] == "sform" and scan.meta["notes"] == []
    assert scan.meta["volume_index"] == 0 and scan.meta["n_volumes"] == 1


@pytest.mark.parametrize("volume", [0, 2], ids=["default", "third"])
def test_4d_takes_the_chosen_volume(tmp_path, volume):
    data = np.stack([stored_values(seed) for seed in range(3)], axis=-1)
    path = write_nifti(tmp_path / "dwi.nii", data, oblique_affine())
    image, _ = LoadScan(volume=volume)(path)
    np.testing.assert_array_equal(image[0].numpy(), data[..., volume])
    assert image.meta["volume_index"] == volume and image.meta["n_volumes"] == 3
    assert f"4-D file with 3 volumes: used volume {volume} (--volume)" in image.meta["notes"]


@pytest.mark.parametrize(
    ("shape", "volume", "error", "match"),
    [
        ((*SHAPE, 3), 3, ConfigError, "holds 3 volume.*got 3; pass --volume between 0 and 2"),
        (SHAPE, 1, ConfigError, "holds 1 volume"),
        (SHAPE, -1, ConfigError, "must be 0 or more"),
        (SHAPE, 1.0, TypeError, '"volume" must be an int'),
    ],
    ids=["4d-out-of-range", "3d-volume-1", "negative", "float"],
)
def test_bad_volume_index(tmp_path, shape, volume, error, match):
    path = write_nifti(tmp_path / "v.nii", np.zeros(shape, np.int16), np.eye(4))
    with pytest.raises(error, match=match):
        load_scan(path, volume=volume)


def test_header_scaling_applied_once(tmp_path):
    raw = stored_values()
    path = write_nifti(tmp_path / "s.nii", raw, np.eye(4), scl_slope=2.0, scl_inter=10.0)
    scan = load_nifti(path)
    np.testing.assert_array_equal(scan.array, raw * 2.0 + 10.0)
    np.testing.assert_array_equal(scan.array, nib.load(path).get_fdata())  # nibabel: once too
    assert (scan.meta["scl_slope"], scan.meta["scl_inter"]) == (2.0, 10.0)
    assert any("scaled once by scl_slope 2, scl_inter 10" in n for n in scan.meta["notes"])


@pytest.mark.parametrize("slope", [0.0, np.nan], ids=["zero", "nan"])
def test_zero_or_nan_slope_means_no_scaling(tmp_path, slope):
    raw = stored_values()
    path = write_nifti(tmp_path / "s.nii", raw, np.eye(4), scl_slope=slope, scl_inter=10.0)
    scan = load_nifti(path)
    np.testing.assert_array_equal(scan.array, raw)
    assert (scan.meta["scl_slope"], scan.meta["scl_inter"]) == (1.0, 0.0)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32], ids=["uint8", "int16", "int32"])
def test_integer_files_equal_float_files(tmp_path, dtype):
    values = np.random.default_rng(3).integers(0, 250, SHAPE)
    as_int = load_scan(write_nifti(tmp_path / "i.nii", values.astype(dtype), np.eye(4)))
    as_float = load_scan(write_nifti(tmp_path / "f.nii", values.astype(np.float32), np.eye(4)))
    assert (
        as_int.array.dtype == np.float32 and nib.load(tmp_path / "i.nii").get_data_dtype() == dtype
    )
    np.testing.assert_array_equal(as_int.array, as_float.array)


def test_nonfinite_voxels_are_counted_masked_and_zeroed(tmp_path):
    data = np.ones(SHAPE, np.float32)
    data[0, 0, 0], data[1, 2, 3], data[4, 4, 4] = np.nan, np.inf, -np.inf
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "n.nii.gz")
    d = LoadScand(keys="image")({"image": tmp_path / "n.nii.gz"})
    image, valid = d["image"], d["image_valid"]
    assert image.meta["nonfinite_voxels"] == 3 and int((~valid).sum()) == 3
    assert not valid[0, 0, 0, 0] and not valid[0, 1, 2, 3] and valid[0, 5, 5, 5]
    assert float(image[0, 0, 0, 0]) == 0.0 and bool(torch.isfinite(image).all())
    assert tuple(valid.shape) == tuple(image.shape) and valid.dtype == torch.bool
    assert any("3 voxel(s) were NaN or infinite" in n for n in image.meta["notes"])


def test_invalid_qform_with_valid_sform_uses_sform(tmp_path):
    path = write_nifti(
        tmp_path / "q.nii",
        stored_values(),
        oblique_affine(),
        quatern_b=0.9,
        quatern_c=0.9,
        qform_code=1,
    )
    scan = load_nifti(path)
    np.testing.assert_allclose(scan.affine, oblique_affine(), atol=1e-6)
    assert any("ignored the invalid qform" in note for note in scan.meta["notes"])


def test_degenerate_sform_falls_back_to_qform(tmp_path):
    path = write_nifti(
        tmp_path / "q.nii", stored_values(), oblique_affine(), srow_x=[0, 0, 0, 0], qform_code=1
    )
    scan = load_nifti(path)
    np.testing.assert_allclose(scan.affine, oblique_affine(), atol=1e-5)
    assert scan.meta["affine_source"] == "qform"


def test_header_without_orientation_is_noted(tmp_path):
    path = write_nifti(tmp_path / "o.nii", stored_values(), np.eye(4), qform_code=0, sform_code=0)
    scan = load_nifti(path)
    assert scan.meta["affine_source"] == "none"
    assert any("no orientation" in note for note in scan.meta["notes"])


def _empty(tmp_path):
    (tmp_path / "e.nii").touch()
    return tmp_path / "e.nii"


def _random_bytes(tmp_path):
    (tmp_path / "r.nii").write_bytes(np.random.default_rng(0).bytes(4000))
    return tmp_path / "r.nii"


def _truncated_gzip(tmp_path):
    nib.save(nib.Nifti1Image(stored_values(), np.eye(4)), tmp_path / "t.nii.gz")
    blob = (tmp_path / "t.nii.gz").read_bytes()
    (tmp_path / "t.nii.gz").write_bytes(blob[: len(blob) - 500])
    return tmp_path / "t.nii.gz"


def _truncated_raw(tmp_path):
    path = write_nifti(tmp_path / "t.nii", stored_values(), np.eye(4))
    path.write_bytes(path.read_bytes()[:1000])
    return path


def _bad_quaternion(tmp_path):
    return write_nifti(
        tmp_path / "q.nii",
        stored_values(),
        np.eye(4),
        quatern_b=0.9,
        quatern_c=0.9,
        quatern_d=0.1,
        qform_code=1,
        sform_code=0,
    )


def _shaped(shape, dtype=np.int16):
    def make(tmp_path):
        return write_nifti(tmp_path / "x.nii", np.ones(shape, dtype), np.eye(4))

    return make


def _degenerate_sform_no_qform(tmp_path):
    return write_nifti(tmp_path / "x.nii", stored_values(), np.eye(4), srow_z=[0, 0, 0, 0])


def _mgh(tmp_path):
    nib.save(nib.MGHImage(np.ones(SHAPE, np.float32), np.eye(4)), tmp_path / "x.mgz")
    return tmp_path / "x.mgz"


def _all_nan(tmp_path):
    return write_nifti(tmp_path / "x.nii", np.full(SHAPE, np.nan, np.float32), np.eye(4))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda p: p / "missing.nii", "does not exist"),
        (_empty, "could not be read as a NIfTI image.*Empty file"),
        (_random_bytes, "could not be read as a NIfTI image"),
        (_truncated_gzip, "truncated or corrupt"),
        (_truncated_raw, "truncated or corrupt"),
        (_bad_quaternion, r"invalid orientation.*b\^2 \+ c\^2 \+ d\^2 = 1.63 > 1.*no valid sform"),
        (_shaped((64, 64)), "3-D volume or a 4-D series.*got 2-D shape"),
        (_shaped((*SHAPE, 2, 3)), "got 5-D shape"),
        (_shaped((64, 64, 4)), r"too small.*at least 8 voxels.*\(64, 64, 4\)"),
        (_shaped((64, 64, 1, 3)), "too small"),
        (_shaped(SHAPE, np.complex64), "complex or RGB"),
        (_all_nan, "no finite voxel"),
        (_degenerate_sform_no_qform, "degenerate sform.*and no qform"),
        (_mgh, "is a MGHImage, not a NIfTI image"),
    ],
    ids=[
        "missing",
        "empty",
        "random-bytes",
        "truncated-gzip",
        "truncated-raw",
        "invalid-quaternion",
        "2d",
        "5d",
        "too-small",
        "too-small-4d",
        "complex",
        "all-nan",
        "degenerate-sform",
        "mgh",
    ],
)
def test_bad_nifti_raises_input_data_error(tmp_path, make, match):
    path = make(tmp_path)
    with pytest.raises(InputDataError, match=match) as info:
        load_scan(path)
    assert str(path) in str(info.value)


def test_nifti_pair_loads(tmp_path):
    nib.save(nib.Nifti1Pair(stored_values(), oblique_affine()), tmp_path / "pair.img")
    scan = load_scan(tmp_path / "pair.hdr")
    np.testing.assert_array_equal(scan.array, stored_values())
    np.testing.assert_allclose(scan.affine, oblique_affine(), atol=1e-6)


def test_loading_twice_gives_identical_output():
    first, second = load_scan(EXAMPLE), load_scan(EXAMPLE)
    np.testing.assert_array_equal(first.array, second.array)
    np.testing.assert_array_equal(first.affine, second.affine)
    assert first.meta["notes"] == second.meta["notes"]


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda p: load_scan(3), TypeError, '"path" must be a file or folder name'),
        (lambda p: load_nifti(p), InputDataError, "is a folder, not a NIfTI file"),
        (lambda p: load_dicom_series(EXAMPLE), InputDataError, "is a file, not a folder"),
        (lambda p: load_dicom_series(p, series=5), TypeError, '"series" must be a'),
    ],
    ids=["path-type", "nifti-folder", "dicom-file", "series-type"],
)
def test_wrong_kind_of_argument(tmp_path, call, error, match):
    with pytest.raises(error, match=match):
        call(tmp_path)


def test_series_option_is_refused_for_nifti():
    with pytest.raises(ConfigError, match="drop --series for NIfTI"):
        load_scan(EXAMPLE, series="1.2.3")


# ----------------------------------------------------------------------------- DICOM


def test_dicom_and_nifti_copies_load_alike(tmp_path, series):
    folder, values, affine, _ = series
    nifti = load_scan(write_nifti(tmp_path / "same.nii", values.astype(np.float32), affine))
    dicom = load_scan(folder)
    np.testing.assert_allclose(dicom.array, nifti.array, atol=1e-4)
    np.testing.assert_allclose(dicom.affine, nifti.affine, atol=1e-4)
    assert dicom.meta["source_format"] == "dicom" and dicom.meta["modality"] == "MR"


def test_reversed_slice_axis_gives_the_same_world_image(tmp_path):
    """When the file's k axis points against the DICOM normal, Z is flipped, geometry kept."""
    values, affine = stored_values().astype(np.float32), oblique_affine(flip_slices=True)
    write_dicom_series(values, affine, tmp_path / "dcm")
    dicom = load_scan(tmp_path / "dcm")
    np.testing.assert_array_equal(dicom.array, values[:, :, ::-1])
    last = affine @ [0, 0, SHAPE[2] - 1, 1]
    np.testing.assert_allclose(dicom.affine[:, 3], last, atol=1e-4)
    np.testing.assert_allclose(dicom.affine[:3, 2], -affine[:3, 2], atol=1e-4)


def test_dicom_geometry_agrees_with_simpleitk(series):
    """SimpleITK (GDCM) reads the series on its own: same voxels, same world positions."""
    folder, _, _, _ = series
    scan = load_dicom_series(folder)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    image = reader.Execute()
    np.testing.assert_allclose(scan.array, sitk.GetArrayFromImage(image).T, atol=1e-4)
    for index in [(0, 0, 0), (11, 0, 0), (0, 9, 0), (3, 4, 8)]:
        lps = np.array(image.TransformIndexToPhysicalPoint(index))
        ras = scan.affine @ [*index, 1]
        np.testing.assert_allclose(ras[:3], lps * [-1, -1, 1], atol=1e-4)


def test_dicom_meta_and_rescale_once(series):
    folder, values, _, paths = series
    image, valid = LoadScan()(folder)
    meta = image.meta
    files = [Path(f) for f in meta["dicom_files"]]
    first = pydicom.dcmread(files[0])
    stored = first.pixel_array.T  # pydicom gives stored values: no rescale
    np.testing.assert_array_equal(image[0, :, :, 0].numpy(), stored * 0.5 - 10)
    np.testing.assert_array_equal(image[0].numpy(), values)
    assert meta["series_instance_uid"] == first.SeriesInstanceUID
    assert meta["study_instance_uid"] == first.StudyInstanceUID
    assert meta["sop_instance_uids"] == [pydicom.dcmread(f).SOPInstanceUID for f in files]
    assert [int(pydicom.dcmread(f).InstanceNumber) for f in files] == list(range(1, 10))
    assert sorted(files) == sorted(paths) and files != sorted(files)  # sorted by position
    assert meta["volume_index"] == 0 and meta["nonfinite_voxels"] == 0 and bool(valid.all())
    assert set(meta["dicom_attributes"]) <= set(CARRIED_ATTRIBUTES)
    assert meta["dicom_attributes"]["SeriesDescription"] == "converted by medsi"
    assert any("RescaleSlope 0.5 and RescaleIntercept -10" in n for n in meta["notes"])


def test_one_file_loads_its_series_and_others_are_skipped(series):
    folder, values, _, paths = series
    (folder / "README.txt").write_text("not an image")
    (folder / "DICOMDIR.json").write_bytes(b"{}")
    scan = load_scan(paths[0])
    np.testing.assert_array_equal(scan.array, values)
    assert "one DICOM file was given" in scan.meta["notes"][0]
    assert any("skipped 2 file(s) that are not DICOM" in n for n in scan.meta["notes"])


def test_one_file_with_another_series_uid_is_refused(series):
    with pytest.raises(ConfigError, match='"series" must match the file given'):
        load_scan(series[3][0], series="1.2.3")


def test_patient_attributes_are_carried(tmp_path):
    attributes = {"PatientID": "P-7", "PatientName": "Doe^Jane", "StudyDate": "20240131"}
    write_dicom_series(stored_values(), np.eye(4), tmp_path / "d", attributes=attributes)
    carried = load_scan(tmp_path / "d").meta["dicom_attributes"]
    assert {k: carried[k] for k in attributes} == attributes


def test_several_series_need_a_choice(tmp_path):
    uids = {}
    for name, seed in (("t1", 0), ("flair", 1)):
        paths = write_dicom_series(
            stored_values(seed), np.eye(4), tmp_path / name, attributes={"SeriesDescription": name}
        )
        uids[name] = pydicom.dcmread(paths[0]).SeriesInstanceUID
    with pytest.raises(InputDataError, match="holds 2 DICOM series.*--series") as info:
        load_scan(tmp_path)
    for name, uid in uids.items():
        assert uid in str(info.value) and f"'{name}', 9 file(s)" in str(info.value)
    scan = load_scan(tmp_path, series=uids["flair"])
    np.testing.assert_array_equal(scan.array, stored_values(1))
    assert any("used series" in note for note in scan.meta["notes"])
    with pytest.raises(ConfigError, match='"series" must be the SeriesInstanceUID'):
        load_scan(tmp_path, series="1.2.3.4")


def test_compressed_slices_fall_back_to_simpleitk(tmp_path, series):
    """JPEG Lossless (written by GDCM) that pydicom cannot decode here: GDCM decodes it."""
    folder, values, _, paths = series
    pydicom_decodes = True
    for path in paths:
        ds = pydicom.dcmread(path)
        writer = sitk.ImageFileWriter()
        writer.SetImageIO("GDCMImageIO")
        writer.SetUseCompression(True)
        writer.SetCompressor("JPEG")
        writer.SetFileName(str(tmp_path / "jpeg.dcm"))
        writer.Execute(sitk.GetImageFromArray(ds.pixel_array))
        compressed = pydicom.dcmread(tmp_path / "jpeg.dcm")
        ds.file_meta.TransferSyntaxUID = compressed.file_meta.TransferSyntaxUID
        ds.PixelData = compressed.PixelData
        ds["PixelData"].VR = "OB"
        ds.save_as(path)
    try:
        pydicom.dcmread(paths[0]).pixel_array  # noqa: B018 (decoding is the point)
    except Exception:
        pydicom_decodes = False
    scan = load_scan(folder)
    np.testing.assert_array_equal(scan.array, values)  # RescaleSlope 0.5 applied once
    if not pydicom_decodes:
        assert any("decoded with SimpleITK (GDCM)" in n for n in scan.meta["notes"])


def _delete_middle(paths, _):
    paths[4].unlink()


def _uneven(paths, step):
    for path in paths[5:]:
        edit_dicom(path, lambda ds: _shift(ds, 0.3 * step))


def _tilted(paths, step):
    row = ras_to_lps_direction(oblique_affine(), 0)
    for k, path in enumerate(paths):
        edit_dicom(path, lambda ds, k=k: _shift(ds, 0.2 * k * row))


def _duplicate(paths, _):
    position = pydicom.dcmread(paths[3]).ImagePositionPatient
    edit_dicom(paths[4], lambda ds: setattr(ds, "ImagePositionPatient", position))


def _shift(ds, offset):
    ds.ImagePositionPatient = [
        f"{float(v) + o:.6f}" for v, o in zip(ds.ImagePositionPatient, offset, strict=True)
    ]


def _set(index, **values):
    def change(paths, _):
        edit_dicom(paths[index], lambda ds: [setattr(ds, k, v) for k, v in values.items()])

    return change


def _remove(keyword):
    def change(paths, _):
        edit_dicom(paths[2], lambda ds: delattr(ds, keyword))

    return change


def _jpeg2000_garbage(paths, _):
    def change(ds):
        ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
        ds.PixelData = encapsulate([b"\x00\x01" * 64])
        ds["PixelData"].VR = "OB"

    edit_dicom(paths[6], change)


def _truncated_pixels(paths, _):
    paths[2].write_bytes(paths[2].read_bytes()[:-50])


def _few_slices(paths, _):
    for path in paths[5:]:
        path.unlink()


def _only_text(paths, _):
    for path in paths:
        path.unlink()
    (paths[0].parent / "notes.txt").write_text("hello")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (_delete_middle, r"gap in its slices.*spacing is 5\.000 mm while it is 2\.500 mm.*1 slice"),
        (_uneven, "unevenly spaced"),
        (_tilted, "tilted or sheared stack"),
        (_duplicate, "two slices at one position"),
        (_set(3, Rows=11), "disagree on Rows"),
        (
            _set(3, ImageOrientationPatient=[1, 0, 0, 0, 1, 0]),
            "disagree on ImageOrientationPatient",
        ),
        (_set(5, PixelSpacing=[0.8, 0.9]), "disagree on PixelSpacing"),
        (_set(2, NumberOfFrames=2), "multi-frame object.*dcm2niix"),
        (_set(2, SOPClassUID="1.2.840.10008.5.1.4.1.1.4.1"), "Enhanced MR Image Storage"),
        (_remove("ImagePositionPatient"), "has no ImagePositionPatient"),
        (_set(1, RescaleSlope="0"), "RescaleSlope '0'.*non-zero"),
        (_jpeg2000_garbage, r"JPEG 2000 Image Compression \(Lossless Only\).*no installed decoder"),
        (_truncated_pixels, "pixel data that could not be read.*truncated or damaged"),
        (_set(4, SamplesPerPixel=3), "SamplesPerPixel"),
        (_few_slices, "too small"),
        (_only_text, "holds no DICOM image"),
    ],
    ids=[
        "missing-slice",
        "uneven",
        "tilted",
        "duplicate-position",
        "rows",
        "orientation",
        "pixel-spacing",
        "multi-frame",
        "enhanced-mr",
        "no-position",
        "zero-slope",
        "undecodable",
        "truncated-pixels",
        "colour",
        "too-few-slices",
        "no-dicom",
    ],
)
def test_bad_dicom_raises_input_data_error(series, change, match):
    folder, _, affine, paths = series
    by_position = sorted(paths, key=lambda p: float(pydicom.dcmread(p).SliceLocation))
    change(by_position, (LPS_TO_RAS @ affine)[:3, 2])
    with pytest.raises(InputDataError, match=match):
        load_scan(folder)


def test_volume_must_be_0_for_dicom(series):
    with pytest.raises(ConfigError, match="holds 1 volume"):
        load_scan(series[0], volume=1)


# ----------------------------------------------------------------------------- writer


def test_written_series_is_valid_mr_image_storage(tmp_path, strict_dicom):
    values = np.random.default_rng(4).normal(100, 30, SHAPE)  # floats: auto rescale
    paths = write_dicom_series(values, oblique_affine(), tmp_path / "d")
    ds = pydicom.dcmread(paths[0])
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4" and ds.Modality == "MR"
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    for keyword in ("ScanningSequence", "SequenceVariant", "ImageType", "FrameOfReferenceUID"):
        assert ds.get(keyword) not in (None, "")
    for keyword in ("PatientName", "PatientID", "StudyDate", "EchoTime", "MRAcquisitionType"):
        assert keyword in ds
    scan = load_scan(tmp_path / "d")
    slope = float(ds.RescaleSlope)
    assert np.abs(scan.array - values).max() <= slope / 2 + 1e-4


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"volume": np.zeros((12, 10))}, ConfigError, "non-empty 3-D array"),
        ({"volume": np.full(SHAPE, np.nan)}, ConfigError, "must be finite"),
        ({"affine": np.diag([1.0, 1.0, 0.0, 1.0])}, ConfigError, "invertible 4x4"),
        (
            {"affine": np.array([[1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])},
            ConfigError,
            "perpendicular",
        ),
        ({"rescale": (0, 1)}, ConfigError, "non-zero slope"),
        ({"rescale": (0.001, 0)}, ConfigError, "beyond int16"),
        ({"attributes": {"PatientNam": "x"}}, ConfigError, "DICOM keywords"),
        ({"attributes": {"Rows": 3}}, ConfigError, "may not set Rows"),
        ({"attributes": {"StudyDate": "31/01/2024"}}, ConfigError, "value for StudyDate"),
        ({"attributes": ["PatientID"]}, TypeError, "must be a mapping"),
    ],
    ids=[
        "2d",
        "nan",
        "singular",
        "sheared-plane",
        "zero-slope",
        "overflow",
        "unknown-keyword",
        "computed-keyword",
        "bad-date",
        "not-mapping",
    ],
)
def test_writer_refuses_bad_arguments(tmp_path, kwargs, error, match):
    arguments = {"volume": stored_values(), "affine": np.eye(4), "folder": tmp_path / "d"}
    arguments.update(kwargs)
    with pytest.raises(error, match=match):
        write_dicom_series(**arguments)


def test_writer_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "other.dcm").touch()
    with pytest.raises(ConfigError, match="new or empty folder"):
        write_dicom_series(stored_values(), np.eye(4), tmp_path)


# ----------------------------------------------------------------------------- transforms


def test_load_scand_contract():
    data = {"image": str(EXAMPLE), "label": 3}
    d = Compose(
        [
            LoadScand(keys="image"),
            Orientationd(keys=["image", "image_valid"], axcodes="LPS", labels=None),
        ]
    )(data)
    assert data == {"image": str(EXAMPLE), "label": 3}  # input untouched
    assert d["label"] == 3 and tuple(d["image"].shape) == (1, 128, 128, 10)
    assert d["image"].affine[0, 0] < 0 and d["image_valid"].affine[0, 0] < 0


def test_load_scand_keys(tmp_path):
    with pytest.raises(KeyError, match="image.*LoadScand"):
        LoadScand(keys="image")({"other": 1})
    assert LoadScand(keys="image", allow_missing_keys=True)({"other": 1}) == {"other": 1}
    d = LoadScand(keys=("a", "b"), valid_keys=("va", "vb"))({"a": EXAMPLE, "b": EXAMPLE})
    assert sorted(d) == ["a", "b", "va", "vb"]
    with pytest.raises(ConfigError, match='"valid_keys" must give one distinct key per key'):
        LoadScand(keys=("a", "b"), valid_keys="v")
    with pytest.raises(TypeError, match='"image" must hold the path of a scan.*for LoadScand'):
        LoadScand()({"image": 3})


def test_mask_nonfinite_casts_overflow_to_invalid():
    clean, valid, count = mask_nonfinite(np.array([1.0, 1e300, np.nan]))
    assert clean.tolist() == [1.0, 0.0, 0.0] and valid.tolist() == [True, False, False]
    assert count == 2
