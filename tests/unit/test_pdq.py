"""pipeline.pdq: the multi-index matcher gives exactly brute force's answers, hashes are in
ThreatExchange's hex layout, and list files of every accepted layout read (a bad entry is one
line naming file and line)."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.errors import UserError
from pipeline.pdq import PdqIndex, brute_force_matches, codes_of, hash_image, read_pdq_list
from pipeline.testing.photos import jpeg, photo_tiles


def flipped(code: np.ndarray, bits, rng) -> np.ndarray:
    code = code.copy()
    for bit in rng.choice(256, bits, replace=False):
        code[bit // 8] ^= np.uint8(1 << (bit % 8))
    return code


def spread(code: np.ndarray, flips: int, band_bits: int) -> np.ndarray:
    """`flips` bits flipped round-robin over the index's bands (word w, band b: value bits
    [b * band_bits, (b + 1) * band_bits) of big-endian word w): the pigeonhole's edge."""
    code = code.copy()
    bands = [(w, b) for w in range(4) for b in range(64 // band_bits)]
    for k in range(flips):
        word, band = bands[k % len(bands)]
        value_bit = band * band_bits + k // len(bands)
        code[word * 8 + 7 - value_bit // 8] ^= np.uint8(1 << (value_bit % 8))
    return code


@pytest.fixture(scope="module")
def planted():
    """5,000 random list hashes; queries: near copies of list hashes at 0..40 bits (each
    distance 4 times), copies with the flips packed in few bands or spread evenly over the
    bands of either layout, and random hashes."""
    rng = np.random.default_rng(7)
    codes = rng.integers(0, 256, (5_000, 32), dtype=np.uint8)
    near = [flipped(codes[rng.integers(len(codes))], d, rng) for d in range(41) for _ in range(4)]
    edges = []
    for d in (11, 12, 15, 16, 17, 23, 24, 31, 32, 35, 36, 47, 48):
        packed = codes[rng.integers(len(codes))].copy()
        for k in range(d):
            packed[k // 8] ^= np.uint8(1 << (k % 8))
        edges += [packed] + [spread(codes[rng.integers(len(codes))], d, bits) for bits in (16, 21)]
    far = rng.integers(0, 256, (200, 32), dtype=np.uint8)
    return codes, np.stack(near + edges + list(far))


@pytest.mark.parametrize("band_bits", [16, 21])
@pytest.mark.parametrize("distance", [0, 1, 11, 12, 15, 16, 23, 24, 31, 32, 35, 36, 40, 47, 48, 63, 64])
def test_matches_are_exactly_brute_force(planted, distance, band_bits):
    codes, queries = planted
    index = PdqIndex(codes, band_bits=band_bits)
    hexes = [bytes(q).hex() for q in queries]
    found = index.matches(hexes, distance)
    expected = brute_force_matches(codes, queries, distance)
    assert (found == expected).all(), np.flatnonzero(found != expected)[:5]
    assert expected.any() and not expected.all()
    one_by_one = np.array([index.matches([h], distance)[0] for h in hexes[::37]])
    assert (one_by_one == expected[::37]).all()


def test_inputs_of_every_form_and_nulls():
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 256, (50, 32), dtype=np.uint8)
    words = codes.view(">u8").astype(np.uint64)                     # (n, 4) uint64, most significant first
    hexes = [bytes(c).hex() for c in codes]
    for hashes in (codes, words, hexes, hexes + hexes):             # duplicates are fine
        index = PdqIndex(hashes)
        assert len(index) == 50
        assert index.matches(hexes[:3] + [None, "xyz", ""], 0).tolist() == [True] * 3 + [False] * 3
    assert not PdqIndex(np.zeros((0, 32), np.uint8)).matches(hexes[:2]).any()
    assert codes_of([hexes[0].upper()])[1].tolist() == [True]


def test_hash_image_is_pdqhash_in_threatexchange_layout():
    """Our sampled computation gives pdqhash's (the reference C++) bits and quality exactly,
    on real photos of many sizes and shapes (flat images, quality 0, have noise for bits)."""
    import cv2
    import pdqhash

    tiles = photo_tiles(128)
    images = [cv2.cvtColor(np.asarray(t), cv2.COLOR_BGR2RGB) for t in tiles[::6]]
    big = cv2.cvtColor(np.asarray(tiles[0].resize((1500, 1100))), cv2.COLOR_RGB2BGR)
    images += [cv2.resize(big, (w, h)) for w, h in ((1500, 1100), (64, 64), (65, 63), (17, 300), (33, 20),
                                                     (129, 127), (1025, 257))]
    for image in images:
        data = cv2.imencode(".png", image)[1].tobytes()
        hex_hash, quality = hash_image(data)
        bits, expected_quality = pdqhash.compute(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
        # the reference formats w[15]..w[0], bit 255 first: pdqhash's vector is in that order
        assert hex_hash == format(int("".join(str(int(b)) for b in bits), 2), "064x"), image.shape
        assert quality == expected_quality and 0 < quality <= 100
    assert hash_image(b"not an image") == (None, None)
    assert hash_image(jpeg(tiles[0]))[0] == hash_image(jpeg(tiles[0]))[0]


def test_list_layouts(tmp_path):
    rng = np.random.default_rng(2)
    hexes = [bytes(c).hex() for c in rng.integers(0, 256, (6, 32), dtype=np.uint8)]
    (tmp_path / "plain.txt").write_text(f"# list\n\n{hexes[0].upper()}\n{hexes[1]}  # note\n")
    (tmp_path / "hasher.csv").write_text(f"{hexes[2]},100,a.jpg\n")                  # pdq-photo-hasher
    # ThreatExchange's `threatexchange dataset -P -s pdq` (collab, signal, category)
    (tmp_path / "te.txt").write_text(f"'Sample Signals' {hexes[3]} WORTH_INVESTIGATING\n")
    # and its `dataset -P --csv`: other signal types skipped
    (tmp_path / "te.csv").write_text(
        "collab,signal_type,signal_str,category,tags\n"
        f"Sample Signals,pdq,{hexes[4]},WORTH_INVESTIGATING,\n"
        "Sample Signals,url,https://developers.facebook.com/docs/threat-exchange/,WORTH_INVESTIGATING,\n"
        f'"Other, Inc",pdq,{hexes[5]},WORTH_INVESTIGATING,"a,b"\n')
    pq.write_table(pa.table({"id": [1], "pdq": [hexes[1]]}), tmp_path / "list.parquet")
    files = [str(tmp_path / n) for n in ("plain.txt", "hasher.csv", "te.txt", "te.csv", "list.parquet")]
    codes = read_pdq_list(files)
    assert [bytes(c).hex() for c in codes] == [hexes[0], hexes[1], hexes[2], hexes[3], hexes[4], hexes[5], hexes[1]]


@pytest.mark.parametrize("content, message", [
    ("ab" * 32 + "\nnot-a-hash\n", "bad.txt:2: not a PDQ hash"),
    ("ab" * 33 + "\n", "bad.txt:1: not a PDQ hash"),
    ("pdq,quality\n" + "ab" * 32 + ",100\n" + "ab" * 31 + ",100\n", "bad.txt:3: not a PDQ hash"),
])
def test_a_bad_entry_names_file_and_line(tmp_path, content, message):
    (tmp_path / "bad.txt").write_text(content)
    with pytest.raises(UserError, match=message) as error:
        read_pdq_list([str(tmp_path / "bad.txt")])
    assert "\n" not in str(error.value)
    with pytest.raises(UserError, match="missing.txt: no such file"):
        read_pdq_list([str(tmp_path / "missing.txt")])
