import json
import math

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

import medsi.assets as assets
from medsi.data.phantom import (
    BRATS_CENTER_MM,
    NOMINAL_INTENSITY,
    LesionConfig,
    Phantom,
    PhantomConfig,
    PhantomSubject,
    brats_grid,
    draw_subject,
    load_template,
    make_phantom,
    render,
    save_nifti,
    save_phantom,
)
from medsi.errors import ConfigError, InputDataError

COARSE = PhantomConfig(spacing_mm=2.0)
LESIONS = LesionConfig(
    count=3, radius_mm=(6.0, 9.0), contrast=0.6, oedema_mm=(2.0, 4.0), oedema_contrast=0.2
)


@pytest.fixture(scope="module")
def normal():
    return draw_subject(11, COARSE)


@pytest.fixture(scope="module")
def with_lesions():
    # Same seed as `normal`: the same anatomy with lesions added.
    return draw_subject(11, PhantomConfig(spacing_mm=2.0, lesions=LESIONS))


def _sigma(phantom: Phantom) -> float:
    return phantom.params["noise"]["sigma"]


# --------------------------------------------------------------------------- template and grid


def test_template_arrays():
    template = load_template()
    assert template is load_template()  # cached
    assert template.t1.shape == template.grey_matter.shape == (197, 233, 189)
    for name in ("t1", "grey_matter", "white_matter", "csf"):
        array = getattr(template, name)
        assert array.dtype == np.float32, name
        assert 0.0 <= array.min() and array.max() <= 1.0, name
        assert not array.flags.writeable, name
    np.testing.assert_array_equal(template.brain_mask, template.t1 > 0)
    total = template.grey_matter + template.white_matter + template.csf
    np.testing.assert_allclose(total, template.brain_mask, atol=1e-6)
    assert not template.grey_matter[~template.brain_mask].any()
    np.testing.assert_array_equal(np.diag(template.affine), [1.0, 1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="read-only"):
        template.grey_matter[0, 0, 0] = 1.0


def test_unreadable_template_file(tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not a nifti file")
    with pytest.raises(InputDataError, match='"broken.nii.gz" could not be read as a NIfTI'):
        assets.read_volume(bad)


def test_missing_template_file(monkeypatch):
    monkeypatch.setitem(assets.ATLAS_FILES, "t1", "missing_t1.nii.gz")
    with pytest.raises(InputDataError, match='"missing_t1.nii.gz" could not be read'):
        assets.read_atlas.__wrapped__()  # the reader itself, not its cache


def test_template_files_on_different_grids(monkeypatch):
    def fake_read(path):
        size = 4 if path.name.startswith("mni_icbm152_t1") else 5
        return np.zeros((size,) * 3, dtype=np.float32), np.eye(4)

    monkeypatch.setattr(assets, "read_volume", fake_read)
    with pytest.raises(InputDataError, match="the template volumes must share one grid"):
        assets.read_atlas.__wrapped__()


@pytest.mark.parametrize(
    ("spacing", "shape"),
    [
        (1.0, (240, 240, 155)),
        (2.0, (120, 120, 78)),
        (4.0, (60, 60, 39)),
        ((1.0, 1.0, 5.0), (240, 240, 31)),
    ],
    ids=["1mm", "2mm", "4mm", "thick-slices"],
)
def test_grid_covers_brats_field_of_view(spacing, shape):
    got_shape, affine = brats_grid(spacing)
    assert got_shape == shape
    np.testing.assert_allclose(np.diag(affine)[:3], np.broadcast_to(spacing, 3))
    assert np.count_nonzero(affine[:3, :3] - np.diag(np.diag(affine)[:3])) == 0
    centre = affine @ np.append((np.array(shape) - 1) / 2.0, 1.0)
    np.testing.assert_allclose(centre[:3], BRATS_CENTER_MM)


def test_default_grid_has_integer_template_coordinates():
    shape, affine = brats_grid()
    np.testing.assert_array_equal(affine[:3, 3], [-120.0, -137.0, -63.0])
    last = affine @ np.append(np.array(shape) - 1, 1.0)
    np.testing.assert_array_equal(last[:3], [119.0, 102.0, 91.0])


def test_identity_transform_reproduces_the_template():
    config = PhantomConfig(
        shape=(96, 96, 65),
        deformation_mm=0.0,
        rotation_deg=0.0,
        scaling=0.0,
        translation_mm=0.0,
        skull=False,
        bias=0.0,
    )
    subject = draw_subject(0, config)
    template = load_template()
    offset = (np.linalg.inv(template.affine) @ subject.affine)[:3, 3]
    np.testing.assert_array_equal(offset, np.round(offset))  # the grids share voxel centres
    box = tuple(slice(int(o), int(o) + n) for o, n in zip(offset, (96, 96, 65), strict=True))
    np.testing.assert_allclose(subject.grey_matter, template.grey_matter[box], atol=1e-4)
    np.testing.assert_allclose(subject.white_matter, template.white_matter[box], atol=1e-4)
    np.testing.assert_array_equal(subject.brain_mask, template.brain_mask[box])
    np.testing.assert_array_equal(subject.bias_field, 1.0)


# --------------------------------------------------------------------------- image properties


def test_full_size_phantom():
    phantom = make_phantom(0)
    shape, affine = brats_grid()
    assert phantom.image.shape == shape == (240, 240, 155)
    assert phantom.image.dtype == np.float32
    np.testing.assert_array_equal(phantom.affine, affine)
    assert np.isfinite(phantom.image).all() and phantom.image.min() >= 0.0
    assert 1000.0 < phantom.params["subject"]["brain_volume_ml"] < 2200.0
    assert phantom.image.flags.writeable


def test_arrays_types_and_record(normal):
    phantom = render(normal, 3)
    assert phantom.image.dtype == np.float32 and phantom.image.shape == (120, 120, 78)
    assert np.isfinite(phantom.image).all() and phantom.image.min() >= 0.0
    np.testing.assert_array_equal(phantom.affine, brats_grid(2.0)[1])
    assert phantom.brain_mask.dtype == bool and phantom.oedema_mask.dtype == bool
    assert phantom.lesion_labels.dtype == np.int16 and not phantom.lesion_labels.any()
    assert not phantom.oedema_mask.any()
    for name in ("signal", "grey_matter", "brain_mask", "lesion_labels", "bias_field"):
        assert not getattr(normal, name).flags.writeable, name
    params = phantom.params
    assert params["subject"]["seed"] == 11 and params["noise"]["seed"] == 3
    assert params["subject"]["lesions"] == []
    assert params["subject"]["config"]["spacing_mm"] == [2.0, 2.0, 2.0]
    json.dumps(params)  # plain values only


def test_background_is_the_rician_noise_floor(normal):
    phantom = render(normal, 4, noise=0.05)
    air = ~ndimage.binary_dilation(normal.head_mask, iterations=3)
    assert air.sum() > 100_000
    assert normal.signal[air].max() < 1e-3
    expected = _sigma(phantom) * math.sqrt(math.pi / 2.0)  # Rayleigh mean
    assert phantom.image[air].mean() == pytest.approx(expected, rel=0.03)


@pytest.mark.parametrize("seed", [0, 1, 2], ids=["seed0", "seed1", "seed2"])
def test_flair_contrast_grey_over_white_over_csf(seed):
    subject = draw_subject(seed, COARSE)
    image = render(subject, seed + 100).image / subject.bias_field
    brain = subject.brain_mask
    grey = image[brain & (subject.grey_matter > 0.9)].mean()
    white = image[brain & (subject.white_matter > 0.9)].mean()
    csf = image[brain & (subject.csf > 0.9)].mean()
    assert grey > white > csf
    assert 1.02 < grey / white < 1.3
    assert csf / white < 0.3
    intensity = subject.params["tissue_intensity"]
    for name, nominal in NOMINAL_INTENSITY.items():
        assert intensity[name] == pytest.approx(nominal, rel=0.05 + 1e-9)


@pytest.mark.parametrize("skull", [True, False], ids=["skull", "skull-stripped"])
def test_skull_and_scalp_shell(skull):
    subject = draw_subject(5, PhantomConfig(spacing_mm=2.0, skull=skull))
    around = ~ndimage.binary_dilation(subject.brain_mask, iterations=1)
    outside = subject.signal[around]
    white = subject.params["tissue_intensity"]["white_matter"]
    if skull:
        shell = subject.head_mask & around
        assert shell.sum() > 0.3 * subject.brain_mask.sum()
        assert subject.signal[shell].mean() > 0.2 * white
        assert outside.max() > 0.8 * white  # bright scalp
        assert subject.params["shell"]["skull_mm"] > 0
    else:
        np.testing.assert_array_equal(subject.head_mask, subject.brain_mask)
        assert subject.signal[~subject.brain_mask].max() == 0.0
        assert subject.params["shell"] is None


@pytest.mark.parametrize("bias", [0.0, 0.15, 0.3], ids=["none", "default", "strong"])
def test_bias_field_bounds(bias):
    subject = draw_subject(6, PhantomConfig(spacing_mm=4.0, bias=bias))
    field = subject.bias_field
    assert field.min() >= 1.0 / (1.0 + bias) - 1e-3 and field.max() <= 1.0 + bias + 1e-3
    if bias == 0.0:
        np.testing.assert_array_equal(field, 1.0)
    else:
        assert np.log(field).max() - np.log(field).min() > 0.5 * math.log1p(bias)


# --------------------------------------------------------------------------- randomness


def test_same_seed_gives_identical_phantoms():
    config = PhantomConfig(spacing_mm=3.0, lesions=LesionConfig(count=2))
    a, b = make_phantom(21, config), make_phantom(21, config)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.lesion_labels, b.lesion_labels)
    assert a.params == b.params
    c = make_phantom(21, config, noise_seed=5)
    np.testing.assert_array_equal(c.image, render(draw_subject(21, config), 5).image)
    assert not np.array_equal(a.image, c.image)


def test_different_seeds_give_different_anatomy(normal):
    other = draw_subject(12, COARSE)
    changed = (other.brain_mask != normal.brain_mask).sum() / normal.brain_mask.sum()
    assert changed > 0.02
    assert other.params["transform"] != normal.params["transform"]


def test_anatomy_does_not_depend_on_the_grid(normal):
    coarse = draw_subject(11, PhantomConfig(spacing_mm=4.0))
    assert coarse.params["transform"] == normal.params["transform"]
    volumes = coarse.params["brain_volume_ml"], normal.params["brain_volume_ml"]
    assert volumes[0] == pytest.approx(volumes[1], rel=0.03)


@pytest.mark.parametrize("noise", [0.02, 0.05], ids=["snr50", "snr20"])
def test_same_subject_two_noise_draws(normal, noise):
    first, second = render(normal, 1, noise), render(normal, 2, noise)
    assert first.subject is second.subject is normal
    np.testing.assert_array_equal(render(normal, 1, noise).image, first.image)
    sigma = _sigma(first)
    assert sigma == pytest.approx(noise * normal.params["tissue_intensity"]["white_matter"])
    bright = normal.signal > 15.0 * sigma
    assert bright.sum() > 10_000
    difference = (first.image - second.image)[bright]
    assert abs(difference.mean()) < 0.02 * sigma
    assert difference.std() == pytest.approx(math.sqrt(2.0) * sigma, rel=0.03)
    assert (first.image - normal.signal)[bright].std() == pytest.approx(sigma, rel=0.03)


def test_zero_noise_gives_the_signal(normal):
    np.testing.assert_array_equal(render(normal, 0, noise=0.0).image, normal.signal)


# --------------------------------------------------------------------------- lesions


def test_lesion_count_and_location(with_lesions):
    labels, oedema, brain = (
        with_lesions.lesion_labels,
        with_lesions.oedema_mask,
        with_lesions.brain_mask,
    )
    assert set(np.unique(labels).tolist()) == {0, 1, 2, 3}
    assert len(with_lesions.params["lesions"]) == 3
    assert brain[labels > 0].all() and brain[oedema].all()
    assert not oedema[labels > 0].any()
    assert oedema.sum() > (labels > 0).sum() * 0.3
    for record in with_lesions.params["lesions"]:
        index = np.linalg.solve(with_lesions.affine, np.append(record["center_mm"], 1.0))[:3]
        centre = tuple(np.round(index).astype(int))
        assert labels[centre] == record["label"]
        assert with_lesions.white_matter[centre] >= 0.9


def test_lesion_sizes(with_lesions):
    radii = []
    for record in with_lesions.params["lesions"]:
        radius = record["radius_mm"]
        radii.append(radius)
        assert 6.0 <= radius <= 9.0
        target = 4.0 / 3.0 * math.pi * radius**3
        assert record["target_volume_mm3"] == pytest.approx(target)
        assert np.prod(record["semi_axes_mm"]) == pytest.approx(radius**3)
        volume = (with_lesions.lesion_labels == record["label"]).sum() * 8.0
        assert volume == pytest.approx(target, rel=0.08)
        assert record["volume_mm3"] == volume
    assert len(set(radii)) == 3  # several sizes


def test_lesion_contrast_over_surrounding_white_matter(with_lesions):
    phantom = render(with_lesions, 8)
    white = with_lesions.params["tissue_intensity"]["white_matter"]
    corrected = with_lesions.signal / with_lesions.bias_field
    lesion_any = ndimage.binary_dilation(
        (with_lesions.lesion_labels > 0) | with_lesions.oedema_mask, iterations=2
    )
    for record in with_lesions.params["lesions"]:
        core = with_lesions.lesion_labels == record["label"]
        # Noise-free: the core holds lesion tissue at (1 + contrast) x white matter.
        np.testing.assert_allclose(corrected[core], white * 1.6, rtol=0.02)
        # Noisy image: against white matter within 20 mm of the lesion, outside every halo.
        near = ndimage.binary_dilation(core, iterations=10) & ~lesion_any
        ring = near & (with_lesions.white_matter > 0.9)
        assert ring.sum() > 50
        ratio = phantom.image[core].mean() / phantom.image[ring].mean()
        assert ratio == pytest.approx(1.6, rel=0.03)
    oedema = corrected[with_lesions.oedema_mask & (with_lesions.white_matter > 0.9)]
    assert white * 1.05 < oedema.mean() < white * 1.6


def test_lesions_leave_the_rest_of_the_anatomy_unchanged(normal, with_lesions):
    touched = ndimage.binary_dilation(
        (with_lesions.lesion_labels > 0) | with_lesions.oedema_mask, iterations=2
    )
    np.testing.assert_array_equal(normal.signal[~touched], with_lesions.signal[~touched])
    np.testing.assert_array_equal(normal.brain_mask, with_lesions.brain_mask)
    assert (with_lesions.signal[touched] > normal.signal[touched]).mean() > 0.5


def test_lesions_without_room():
    config = PhantomConfig(spacing_mm=4.0, lesions=LesionConfig(radius_mm=(50.0, 55.0)))
    with pytest.raises(ConfigError, match='"lesions" could not be placed: lesion 1 of 1'):
        draw_subject(0, config)


# --------------------------------------------------------------------------- files


def test_save_phantom_round_trip(tmp_path):
    phantom = make_phantom(2, PhantomConfig(spacing_mm=4.0, lesions=LesionConfig(count=1)))
    paths = save_phantom(phantom, tmp_path, stem="case")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [
            "case_flair.nii.gz",
            "case_brain.nii.gz",
            "case_lesions.nii.gz",
            "case_oedema.nii.gz",
            "case.json",
        ]
    )  # no temporary files left behind
    image = nib.load(paths["image"])
    np.testing.assert_array_equal(np.asanyarray(image.dataobj), phantom.image)
    np.testing.assert_allclose(image.affine, phantom.affine)
    assert image.header.get_xyzt_units()[0] == "mm"
    labels = np.asanyarray(nib.load(paths["lesion_labels"]).dataobj)
    assert labels.dtype == np.int16
    np.testing.assert_array_equal(labels, phantom.lesion_labels)
    brain = np.asanyarray(nib.load(paths["brain_mask"]).dataobj)
    np.testing.assert_array_equal(brain.astype(bool), phantom.brain_mask)
    assert json.loads(paths["params"].read_text()) == json.loads(json.dumps(phantom.params))
    save_phantom(phantom, tmp_path, stem="case")  # overwrites in place
    assert len(list(tmp_path.iterdir())) == 5


@pytest.mark.parametrize(
    ("name", "array", "affine", "match"),
    [
        ("image.png", np.zeros((2, 2, 2)), np.eye(4), '"path" must end in .nii or .nii.gz'),
        ("missing/x.nii.gz", np.zeros((2, 2, 2)), np.eye(4), '"path" must be in an existing'),
        ("x.nii", np.zeros((2, 2)), np.eye(4), '"array" must be 3-D and "affine" 4 x 4'),
        ("x.nii", np.zeros((2, 2, 2)), np.eye(3), '"array" must be 3-D and "affine" 4 x 4'),
    ],
    ids=["suffix", "missing-folder", "2-d", "3x3-affine"],
)
def test_save_nifti_errors(tmp_path, name, array, affine, match):
    with pytest.raises(ConfigError, match=match):
        save_nifti(array, affine, tmp_path / name)


def test_save_nifti_writes_bool_as_uint8(tmp_path):
    path = save_nifti(np.ones((2, 3, 4), dtype=bool), np.eye(4), tmp_path / "mask.nii")
    data = np.asanyarray(nib.load(path).dataobj)
    assert data.dtype == np.uint8 and data.shape == (2, 3, 4) and data.all()


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"spacing_mm": 0.1}, ConfigError, r'"spacing_mm" must be in \[0.5, 8\]'),
        ({"spacing_mm": "1"}, TypeError, '"spacing_mm" must be a number or a sequence of 3'),
        ({"spacing_mm": (1.0, 1.0)}, TypeError, '"spacing_mm" must be a number or a sequence'),
        ({"shape": (4, 4, 4)}, ConfigError, '"shape" must be an integer >= 8'),
        ({"shape": (16.0, 16, 16)}, TypeError, '"shape" must be an int'),
        ({"deformation_mm": 3.0}, ConfigError, r'"deformation_mm" must be in \[0, 2.5\]'),
        ({"rotation_deg": float("nan")}, ConfigError, '"rotation_deg" must be in'),
        ({"scaling": 0.5}, ConfigError, r'"scaling" must be in \[0, 0.3\]'),
        ({"translation_mm": None}, TypeError, '"translation_mm" must be a real number'),
        ({"intensity_variation": 0.3}, ConfigError, '"intensity_variation" must be in'),
        ({"bias": 2.0}, ConfigError, r'"bias" must be in \[0, 1\]'),
        ({"skull": 1}, TypeError, '"skull" must be a bool'),
        ({"lesions": 3}, TypeError, '"lesions" must be a LesionConfig or None'),
    ],
    ids=[
        "spacing-small",
        "spacing-str",
        "spacing-pair",
        "shape-small",
        "shape-float",
        "deformation-large",
        "nan-rotation",
        "scaling-large",
        "translation-none",
        "variation-large",
        "bias-large",
        "skull-int",
        "lesions-int",
    ],
)
def test_phantom_config_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        PhantomConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"count": -1}, ConfigError, '"count" must be an integer >= 0'),
        ({"count": 1.5}, TypeError, '"count" must be an int'),
        ({"radius_mm": (5.0, 2.0)}, ConfigError, '"radius_mm" must have low <= high'),
        ({"radius_mm": 5.0}, TypeError, '"radius_mm" must be a \\(low, high\\) pair'),
        ({"radius_mm": (0.0, 2.0)}, ConfigError, '"radius_mm" must be in'),
        ({"contrast": -0.1}, ConfigError, r'"contrast" must be in \[0, 10\]'),
        ({"oedema_mm": (-1.0, 2.0)}, ConfigError, r'"oedema_mm" must be in \[0, 30\]'),
        ({"oedema_contrast": "0.2"}, TypeError, '"oedema_contrast" must be a real number'),
        ({"elongation": 2.0}, ConfigError, r'"elongation" must be in \[0, 1\]'),
        ({"edge_mm": -1.0}, ConfigError, r'"edge_mm" must be in \[0, 10\]'),
    ],
    ids=[
        "negative-count",
        "float-count",
        "reversed-radius",
        "scalar-radius",
        "zero-radius",
        "negative-contrast",
        "negative-oedema",
        "str-oedema-contrast",
        "elongation-large",
        "negative-edge",
    ],
)
def test_lesion_config_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        LesionConfig(**kwargs)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda s: render(s, 0, noise=-0.1), ConfigError, r'"noise" must be in \[0, 1\]'),
        (lambda s: render(s, 0, noise="high"), TypeError, '"noise" must be a real number'),
        (lambda s: render(s, "7"), TypeError, '"rng" must be a numpy.random.Generator or an int'),
        (lambda s: render(s, -1), ConfigError, '"rng" must be an integer >= 0'),
        (lambda s: render(s.signal, 0), TypeError, '"subject" must be a PhantomSubject'),
        (lambda s: draw_subject(0, {"spacing_mm": 2}), TypeError, '"config" must be a Phantom'),
        (lambda s: draw_subject(1.0, COARSE), TypeError, '"rng" must be a numpy.random.Gen'),
        (lambda s: make_phantom(-3), ConfigError, '"seed" must be an integer >= 0'),
        (lambda s: make_phantom(0, COARSE, noise_seed=1.5), TypeError, '"noise_seed" must be'),
        (lambda s: save_phantom(s, "."), TypeError, '"phantom" must be a Phantom'),
    ],
    ids=[
        "negative-noise",
        "str-noise",
        "str-rng",
        "negative-seed",
        "array-subject",
        "dict-config",
        "float-rng",
        "negative-phantom-seed",
        "float-noise-seed",
        "subject-not-phantom",
    ],
)
def test_call_errors(normal, call, error, match):
    with pytest.raises(error, match=match):
        call(normal)


@pytest.mark.parametrize(
    ("folder", "stem", "match"),
    [
        ("missing", "case", '"folder" must be an existing folder'),
        (".", "a/b", '"stem" must be a non-empty file name'),
        (".", "", '"stem" must be a non-empty file name'),
    ],
    ids=["missing-folder", "separator", "empty"],
)
def test_save_phantom_errors(tmp_path, normal, folder, stem, match):
    with pytest.raises(ConfigError, match=match):
        save_phantom(render(normal, 0), tmp_path / folder, stem=stem)


def test_result_types(normal):
    phantom = render(normal, np.random.default_rng(0))
    assert isinstance(phantom, Phantom) and isinstance(phantom.subject, PhantomSubject)
    assert phantom.params["noise"]["seed"] is None
    assert "image" not in repr(phantom).split("params")[0]
