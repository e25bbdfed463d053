import gzip

import nibabel as nib
import numpy as np
import pytest

from medsi.data import load_slices
from medsi.errors import InputDataError


def _nifti(path, array):
    nib.save(nib.Nifti1Image(np.asarray(array, dtype=np.float32), np.eye(4)), path)


def test_reads_npy_and_nifti_in_name_order(tmp_path):
    rng = np.random.default_rng(0)
    single = rng.standard_normal((8, 6))
    stack = rng.standard_normal((3, 8, 6))
    volume = rng.standard_normal((8, 6, 4))
    flat = rng.standard_normal((8, 6, 1))
    np.save(tmp_path / "a_single.npy", single)
    np.save(tmp_path / "b_stack.npy", stack)
    _nifti(tmp_path / "c_volume.nii.gz", volume)
    _nifti(tmp_path / "d_flat.nii", flat)
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / "sub").mkdir()
    np.save(tmp_path / "sub" / "ignored.npy", np.zeros((2, 2)))

    images, positions = load_slices(tmp_path)

    assert images.dtype == np.float32 and images.shape == (1 + 3 + 4 + 1, 8, 6)
    assert positions.dtype == np.int64
    assert positions.tolist() == [0, 0, 1, 2, 0, 1, 2, 3, 0]
    expected = np.concatenate(
        [single[None], stack, np.moveaxis(volume, -1, 0), flat[None, :, :, 0]]
    ).astype(np.float32)
    np.testing.assert_array_equal(images, expected)


def test_nifti_axial_slices_are_last_axis(tmp_path):
    volume = np.arange(2 * 4 * 3, dtype=np.float32).reshape(2, 4, 3)
    _nifti(tmp_path / "v.nii", volume)
    images, positions = load_slices(str(tmp_path))
    assert images.shape == (3, 2, 4)
    np.testing.assert_array_equal(images[1], volume[:, :, 1])
    assert positions.tolist() == [0, 1, 2]


def test_integer_npy_is_cast_to_float32(tmp_path):
    np.save(tmp_path / "x.npy", np.arange(16, dtype=np.int16).reshape(4, 4))
    images, _ = load_slices(tmp_path)
    assert images.dtype == np.float32 and images[0, 1, 1] == 5.0


def _write_corrupt_npy(folder):
    (folder / "bad.npy").write_bytes(b"\x93NUMPY not really")


def _write_truncated_npy(folder):
    np.save(folder / "good.npy", np.zeros((4, 4)))
    data = (folder / "good.npy").read_bytes()
    (folder / "good.npy").unlink()
    (folder / "bad.npy").write_bytes(data[: len(data) - 20])


def _write_corrupt_nifti(folder):
    (folder / "bad.nii.gz").write_bytes(gzip.compress(b"not a nifti header at all"))


def _write_object_npy(folder):
    np.save(folder / "bad.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)


def _write_string_npy(folder):
    np.save(folder / "bad.npy", np.array([["a", "b"], ["c", "d"]]))


def _write_nan(folder):
    image = np.zeros((4, 4))
    image[1, 2] = np.nan
    np.save(folder / "bad.npy", image)


def _write_mixed_sizes(folder):
    np.save(folder / "a.npy", np.zeros((4, 4)))
    _nifti(folder / "bad.nii", np.zeros((6, 4, 2)))


def _write_four_dims(folder):
    np.save(folder / "bad.npy", np.zeros((2, 2, 4, 4)))


@pytest.mark.parametrize(
    ("write", "match"),
    [
        (_write_corrupt_npy, '"bad.npy" could not be read as a .npy array'),
        (_write_truncated_npy, '"bad.npy" could not be read as a .npy array'),
        (_write_corrupt_nifti, '"bad.nii.gz" could not be read as a NIfTI image'),
        (_write_object_npy, '"bad.npy" could not be read'),
        (_write_string_npy, '"bad.npy" must hold real numbers'),
        (_write_nan, '"bad.npy" must hold finite values, got 1 NaN'),
        (_write_mixed_sizes, r'"bad.nii" must hold images of size \(4, 4\) like "a.npy"'),
        (_write_four_dims, r'"bad.npy" must hold a 2-D slice .* got shape \(2, 2, 4, 4\)'),
    ],
    ids=[
        "corrupt-npy",
        "truncated-npy",
        "corrupt-nifti",
        "pickled-objects",
        "strings",
        "nan",
        "mixed-sizes",
        "four-dims",
    ],
)
def test_bad_files_are_named(tmp_path, write, match):
    write(tmp_path)
    with pytest.raises(InputDataError, match=match):
        load_slices(tmp_path)


def test_empty_folder(tmp_path):
    (tmp_path / "readme.txt").write_text("no slices here")
    with pytest.raises(InputDataError, match='"folder" must hold at least one .npy'):
        load_slices(tmp_path)


def test_missing_folder(tmp_path):
    with pytest.raises(InputDataError, match='"folder" must be an existing folder'):
        load_slices(tmp_path / "nowhere")
