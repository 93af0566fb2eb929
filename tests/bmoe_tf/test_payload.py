"""bmoe_tf.payload: codecs round-trip (lossless ones exactly, JPEG within a stated error),
shared-table JPEG payloads rebuild the full file, sizes are per input, bad settings and
bad payloads are refused in one message."""
import numpy as np
import pytest
from skimage import data as skdata
from skimage import transform

from bmoe_tf import payload


def _photo(side, seed=0):
    """A real photo (scikit-image's astronaut), a crop resized to ``side`` px, uint8 RGB."""
    rng = np.random.default_rng(seed)
    y, x = rng.integers(0, 200, size=2)
    crop = skdata.astronaut()[y:y + 300, x:x + 300]
    return payload.to_uint8(transform.resize(crop, (side, side), anti_aliasing=True))


@pytest.mark.parametrize("spec", ["raw", "png", "zlib"])
def test_lossless_codecs_round_trip_exactly(spec):
    x = _photo(32)
    codec = payload.make_codec(spec)
    assert codec.lossless
    back = codec.decode(codec.encode(x), x.shape)
    assert back.dtype == np.uint8 and np.array_equal(back, x)
    grey = x[..., :1]
    assert np.array_equal(codec.decode(codec.encode(grey), grey.shape), grey)


def test_zlib_carries_int8_motion_vectors_exactly():
    mv = np.random.default_rng(1).integers(-20, 20, size=(4, 24, 24, 2)).astype(np.int8)
    mv[:, 8:] = 0  # flat areas compress
    codec = payload.make_codec("zlib", dtype=np.int8)
    blob = codec.encode(mv)
    assert len(blob) < mv.size
    assert np.array_equal(codec.decode(blob, mv.shape), mv)


def test_jpeg_round_trip_is_close():
    """The stated error: on a detailed 100 px photo, PSNR above 30 dB at quality 90 and
    above 25 dB at 50 (measured 32.0 and 26.9 dB), and rising with the quality."""
    x = _photo(100)
    psnr = {}
    for quality in (50, 90):
        codec = payload.Jpeg(quality)
        back = codec.decode(codec.encode(x), x.shape)
        assert back.shape == x.shape and back.dtype == np.uint8
        mse = ((back.astype(np.float64) - x) ** 2).mean()
        psnr[quality] = 10 * np.log10(255 ** 2 / mse)
    assert psnr[90] > 30 and psnr[50] > 25 and psnr[90] > psnr[50] + 3


@pytest.mark.parametrize("shape", [(16, 16), (21, 21, 1), (32, 32, 3), (100, 100, 3)])
def test_shared_tables_payload_plus_header_is_the_jpeg_file(shape):
    x = _photo(shape[0])
    x = x if len(shape) == 3 and shape[2] == 3 else x[..., 0].reshape(shape)
    full, shared = payload.Jpeg(90), payload.Jpeg(90, shared_tables=True)
    file, scan = full.encode(x), shared.encode(x)
    assert file == shared.header(shape) + scan + b"\xff\xd9"
    assert np.array_equal(shared.decode(scan, shape), full.decode(file, shape))
    assert len(file) - len(scan) > 150  # the tables are most of a small part's file


def test_the_shared_header_is_the_same_for_every_input_of_a_shape():
    codec = payload.Jpeg(75, shared_tables=True)
    heads = {payload.Jpeg._split(codec._file(_photo(24, seed)))[0] for seed in range(5)}
    assert heads == {codec.header((24, 24, 3))}


def test_payload_sizes_are_per_input_and_depend_on_content():
    flat = np.full((3, 64, 64, 3), 128, np.uint8)
    busy = np.stack([_photo(64, s) for s in range(3)])
    for spec in ("png", "jpeg:90", "jpeg:90:tables"):
        small, big = payload.payload_sizes(spec, flat), payload.payload_sizes(spec, busy)
        assert small.dtype == np.int64 and small.shape == (3,)
        assert small.max() < big.min(), spec
    assert payload.payload_sizes("raw", busy).tolist() == [64 * 64 * 3] * 3
    decoded, sizes = payload.round_trip("png", busy)
    assert np.array_equal(decoded, busy) and sizes.tolist() == payload.payload_sizes(
        "png", busy).tolist()


def test_to_uint8_rounds_and_clips():
    assert payload.to_uint8(np.array([-0.1, 0.0, 0.5, 1.0, 1.2])).tolist() == [0, 0, 128, 255, 255]
    x = np.arange(5, dtype=np.uint8)
    assert payload.to_uint8(x) is x


@pytest.mark.parametrize("spec, message", [
    ("jpeg:0", "quality must be an integer in [1, 100], got 0"),
    ("jpeg:101", "quality must be an integer in [1, 100], got 101"),
    ("jpeg:high", "'high' is not an integer"),
    ("webp", "unknown codec 'webp'; known: raw | png | zlib | jpeg:Q"),
    ("jpeg:90:huffman", "unknown codec"),
])
def test_bad_codec_settings_are_named(spec, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")
                       .replace("|", r"\|")):
        payload.make_codec(spec)


def test_a_payload_that_does_not_decode_is_named():
    x = _photo(16)
    for spec in ("png", "jpeg:90"):
        blob = payload.make_codec(spec).encode(x)
        with pytest.raises(ValueError, match="payload of .* B does not decode"):
            payload.make_codec(spec).decode(blob[: len(blob) // 3] + b"junk", x.shape)
    with pytest.raises(ValueError, match="does not decode"):
        payload.make_codec("zlib").decode(b"not zlib", (4,))
    with pytest.raises(ValueError, match="does not hold"):
        payload.make_codec("raw").decode(b"abc", (2, 2))
    with pytest.raises(ValueError, match="decodes to"):
        payload.Png().decode(payload.Png().encode(x), (8, 8, 3))
    with pytest.raises(ValueError, match="take uint8"):
        payload.Png().encode(x.astype(np.float32))


def test_codecs_compare_by_settings():
    assert payload.make_codec("jpeg:90") == payload.Jpeg(90)
    assert payload.make_codec("jpeg:90") != payload.make_codec("jpeg:90:tables")
    assert payload.make_codec("jpeg:80:tables").spec() == "jpeg:80:tables"
    assert payload.Jpeg(80).get_config() == {"codec": "jpeg", "quality": 80,
                                            "shared_tables": False}


def test_sections_round_trip_and_their_sizes_add_up():
    """Two sections (int8 through zlib, uint8 frames as PNG one by one): lossless round
    trip; the payload is each chunk with its length prefix, nothing else."""
    from bmoe_tf.payload import Png, Sections, Zlib, _varint

    rng = np.random.default_rng(0)
    mv = rng.integers(-40, 40, size=(3, 4, 4, 2)).astype(np.int8)
    frames = rng.integers(0, 256, size=(2, 8, 8, 3)).astype(np.uint8)
    codec = Sections([(Zlib(np.int8), np.int8, mv.shape, False),
                      (Png(), np.uint8, frames.shape, True)])
    buf = np.concatenate([mv.reshape(-1).view(np.uint8), frames.reshape(-1)])
    payload = codec.encode(buf)
    np.testing.assert_array_equal(codec.decode(payload), buf)
    chunks = [Zlib(np.int8).encode(mv)] + [Png().encode(f) for f in frames]
    assert len(payload) == sum(len(c) + len(_varint(len(c))) for c in chunks)
    assert codec.lossless and codec.length == buf.size
    assert codec == Sections([(Zlib(np.int8), np.int8, mv.shape, False),
                              (Png(), np.uint8, frames.shape, True)])
    with pytest.raises(ValueError, match="truncated"):
        codec.decode(payload[:-3])
    with pytest.raises(ValueError, match="after its last section"):
        codec.decode(payload + b"\x00")
    with pytest.raises(ValueError, match="uint8 buffer of"):
        codec.encode(buf[:-1])
    assert [len(_varint(n)) for n in (0, 127, 128, 16383, 16384)] == [1, 1, 2, 2, 3]
