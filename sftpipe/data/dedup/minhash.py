"""Word tokens, word n-gram hashes, MinHash signatures and LSH candidate pairs, all vectorized.

Normalization (the same for exact keys, shingles, verification and decontamination): text is
casefolded; a token is a run of letters, digits and `_`; each CJK ideograph or kana is a token of
its own; the ASCII symbols `+ * / = < > % & | ^ ~ \\ $ # @` are one-character tokens (so `a+b` and
`a*b` stay different code); whitespace and punctuation (ASCII and the common Unicode blocks:
general punctuation, CJK and full-width punctuation, Latin-1 marks) only separate tokens. So
whitespace, punctuation and casing changes never change a conversation's tokens.

Tokens are hashed in numpy over the UTF-8 bytes of a whole batch at once, in about half the CPU
time of a regex tokenizer plus rensa's token hashing; signatures come from rensa's R-MinHash over
the pre-hashed shingles, about 90x faster than datasketch (`benchmarks/dedup.py --micro`).
"""

from __future__ import annotations

import numpy as np

_U64 = np.uint64
_P = _U64(0x100000001B3)  # odd, so it has an inverse modulo 2**64
_P_INV = _U64(pow(0x100000001B3, -1, 2**64))
_Q = _U64(0x9E3779B97F4A7C15)  # n-gram combiner

# byte classes: 0 separates, 1 belongs to a word, 2 is a one-character symbol token
_CLASS = np.zeros(256, dtype=np.uint8)
for _c in b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_":
    _CLASS[_c] = 1
for _c in b"+*/=<>%&|^~\\$#@":
    _CLASS[_c] = 2
_CLASS[0x80:] = 1  # non-ASCII: letters unless one of the punctuation ranges below


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer: spreads polynomial hashes over all 64 bits."""
    x = x ^ (x >> _U64(30))
    x = x * _U64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> _U64(27))
    x = x * _U64(0x94D049BB133111EB)
    return x ^ (x >> _U64(31))


_POW: dict[int, np.ndarray] = {}


def _powers(n: int, base: np.uint64) -> np.ndarray:
    """base**0 .. base**(n-1) modulo 2**64 (cached and grown by doubling: cumprod is not free)."""
    have = _POW.get(int(base))
    if have is None or len(have) < n:
        size = max(n, 2 * len(have) if have is not None else 1 << 20)
        have = np.full(size, base, dtype=np.uint64)
        have[0] = 1
        have = _POW[int(base)] = np.cumprod(have, dtype=np.uint64)
    return have[:n]


def _unicode_punct(b: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Positions of the bytes of Unicode punctuation, looking only at non-ASCII bytes `high`."""
    lead = high[high + 2 < len(b)]
    c0, c1, c2 = b[lead], b[lead + 1], b[lead + 2].astype(np.uint32)
    code3 = (c1.astype(np.uint32) << 8) | c2
    three = lead[
        ((c0 == 0xE2) & ((c1 == 0x80) | (c1 == 0x81)))  # U+2000-U+207F general punctuation
        | ((c0 == 0xE3) & (c1 == 0x80))  # U+3000-U+303F CJK punctuation
        | ((c0 == 0xEF) & (((code3 >= 0xBC80) & (code3 <= 0xBC8F)) | ((code3 >= 0xBC9A) & (code3 <= 0xBCA0))))
        | ((c0 == 0xEF) & (((code3 >= 0xBCBB) & (code3 <= 0xBD80)) | ((code3 >= 0xBD9B) & (code3 <= 0xBDA5))))
    ]  # and full-width punctuation U+FF00-FF0F, FF1A-FF20, FF3B-FF40, FF5B-FF65
    two = lead[(c0 == 0xC2) & (c1 >= 0xA0)]  # U+00A0-U+00BF: nbsp, guillemets, marks
    return np.concatenate([three, three + 1, three + 2, two, two + 1])


def tokenize(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Hash the tokens of every text: (flat uint64 token hashes, offsets of each text's tokens)."""
    parts = [t.casefold().encode("utf-8", "replace") for t in texts]
    lens = np.fromiter(map(len, parts), dtype=np.int64, count=len(parts))
    b = np.frombuffer(b"\x00".join(parts) + b"\x00\x00\x00", dtype=np.uint8)
    n = len(b)
    doc_start = np.zeros(len(parts), dtype=np.int64)
    np.cumsum(lens[:-1] + 1, out=doc_start[1:])
    cls = _CLASS[b]
    high = np.flatnonzero(b >= 0xC2)  # lead bytes of non-ASCII characters
    cls[_unicode_punct(b, high)] = 0
    tok = cls != 0
    start = tok.copy()
    start[1:] &= ~tok[:-1]
    # forced token starts: each symbol, whatever follows a symbol, each CJK character and what follows it
    sym = np.flatnonzero(cls == 2)
    cjk = high[(b[high] >= 0xE3) & (b[high] <= 0xE9) & tok[high]]  # U+3000-U+9FFF
    forced = np.concatenate([sym, sym + 1, cjk, cjk + 3])
    forced = forced[forced < n]
    start[forced] = tok[forced]
    last = np.zeros(n, dtype=bool)  # a token's last byte: the next byte starts a token or is none
    last[:-1] = tok[:-1] & (start[1:] | ~tok[1:])
    starts, ends = np.flatnonzero(start), np.flatnonzero(last) + 1
    prefix = np.zeros(n + 1, dtype=np.uint64)
    np.cumsum((b.astype(np.uint64) + _U64(1)) * _powers(n, _P), out=prefix[1:])
    raw = (prefix[ends] - prefix[starts]) * _powers(n, _P_INV)[starts]
    hashes = _mix(raw ^ ((ends - starts).astype(np.uint64) * _Q))
    offsets = np.searchsorted(starts, np.append(doc_start, n))
    return hashes, offsets


def shingles(hashes: np.ndarray, offsets: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of every word n-gram of each text (a text shorter than `n` is one shingle of all of
    its tokens; an empty text has none): (flat uint64, offsets)."""
    counts = np.diff(offsets)
    doc = np.repeat(np.arange(len(counts)), counts)
    m = len(hashes) - n + 1
    if m > 0:
        g = hashes[:m].copy()
        for k in range(1, n):
            g = g * _Q + hashes[k : k + m]
        keep = doc[:m] == doc[n - 1 :]
        grams, gdoc = _mix(g[keep]), doc[:m][keep]
    else:
        grams, gdoc = np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64)
    short = np.flatnonzero((counts > 0) & (counts < n))
    if len(short):
        extra = np.array([ngram_hash(hashes[offsets[i] : offsets[i + 1]]) for i in short], dtype=np.uint64)
        order = np.argsort(np.concatenate([gdoc, short]), kind="stable")
        grams, gdoc = np.concatenate([grams, extra])[order], np.concatenate([gdoc, short])[order]
    out_off = np.searchsorted(gdoc, np.arange(len(counts) + 1))
    return grams, out_off


def ngram_hash(tokens: np.ndarray) -> np.uint64:
    """The shingle hash of a whole token sequence (as `shingles` computes for one window)."""
    g = tokens[:1].copy()
    for k in range(1, len(tokens)):
        g = g * _Q + tokens[k : k + 1]
    return _mix(g)[0]


def sequence_keys(hashes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """One order-sensitive uint64 key per text from its token hashes (equal tokens, equal key)."""
    n = len(hashes)
    prefix = np.zeros(n + 1, dtype=np.uint64)
    np.cumsum(hashes * _powers(n, _P), out=prefix[1:])
    lo, hi = offsets[:-1], offsets[1:]
    raw = (prefix[hi] - prefix[lo]) * _powers(n + 1, _P_INV)[lo]
    return _mix(raw ^ ((hi - lo).astype(np.uint64) * _Q))


def signatures(grams: np.ndarray, offsets: np.ndarray, num_perm: int, seed: int) -> np.ndarray:
    """R-MinHash signatures (rows x num_perm, uint32) of each text's shingle set."""
    from rensa import RMinHash

    if len(offsets) <= 1:
        return np.zeros((0, num_perm), dtype=np.uint32)
    matrix = RMinHash.digest_matrix_from_flat_token_hashes(grams, offsets.astype(np.uint64), num_perm, seed)
    return np.asarray(matrix.to_rows(), dtype=np.uint32).reshape(-1, num_perm)


def candidate_pairs(sigs: np.ndarray, bands: int, max_bucket: int) -> np.ndarray:
    """Row pairs (i < j, int64 [k, 2], sorted, unique) sharing at least one LSH band.

    Within a bucket every pair is a candidate; a bucket larger than `max_bucket` pairs each row
    only with the next `max_bucket - 1` rows, so a huge family of look-alikes cannot go quadratic.
    """
    n = len(sigs)
    found = []
    for band in range(bands):
        key = band_key(sigs, band, bands)
        order = np.argsort(key, kind="stable")
        k = key[order]
        new = np.ones(n, dtype=bool)
        new[1:] = k[1:] != k[:-1]
        pairs = bucket_pairs(order, new, max_bucket)
        if len(pairs):
            found.append(pair_codes(pairs, n))
        del pairs
    return unique_pairs(found, n)


def pair_codes(pairs: np.ndarray, n: int) -> np.ndarray:
    """Each pair (a, b) of rows < n as one int64 code, a * n + b: a quarter of the memory that
    pairs and their copies take on the way to `unique_pairs`."""
    return pairs[:, 0].astype(np.int64) * n + pairs[:, 1]


def unique_pairs(codes: list[np.ndarray], n: int) -> np.ndarray:
    """The pairs (int64 [k, 2], sorted, unique) of chunks of `pair_codes`; empties `codes`, so each
    chunk is freed once it is copied into the one array sorted in place."""
    if not codes:
        return np.zeros((0, 2), dtype=np.int64)
    flat = np.concatenate(codes)
    codes.clear()
    flat.sort()
    keep = np.ones(len(flat), dtype=bool)
    keep[1:] = flat[1:] != flat[:-1]
    flat = flat[keep]
    return np.stack([flat // n, flat % n], axis=1)


def band_key(sigs: np.ndarray, band: int, bands: int) -> np.ndarray:
    """The LSH bucket key (uint64) of every row in one band."""
    rows = sigs.shape[1] // bands
    key = np.zeros(len(sigs), dtype=np.uint64)
    for col in range(band * rows, (band + 1) * rows):
        key = key * _Q + sigs[:, col].astype(np.uint64)
    return key


def bucket_pairs(rows: np.ndarray, new: np.ndarray, max_bucket: int) -> np.ndarray:
    """Candidate pairs (min, max) of buckets laid out one after another: `rows` in bucket order,
    ascending within a bucket, `new` true where a bucket starts. Each row pairs with the next
    `max_bucket - 1` rows of its bucket at most."""
    n = len(rows)
    run = np.cumsum(new) - 1
    run_end = np.append(np.flatnonzero(new)[1:], n)[run]  # exclusive end of each row's bucket
    later = np.minimum(run_end - np.arange(n) - 1, max_bucket - 1)
    total = int(later.sum())
    if not total:
        return np.zeros((0, 2), dtype=np.int64)
    left = np.repeat(np.arange(n), later)
    step = np.arange(total) - np.repeat(np.cumsum(later) - later, later) + 1
    a, b = rows[left], rows[left + step]
    return np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1)


def codepoints(hashes: np.ndarray) -> np.ndarray:
    """One valid code point per token (uint32), so a conversation's tokens can be a string for
    rapidfuzz's fast paths; two different words in one compared pair collide about once in a
    million."""
    cp = (hashes % _U64(0x10FFFF - 0x800)).astype(np.uint32)
    return cp + (cp >= 0xD800).astype(np.uint32) * 0x800  # skip the surrogate range


def as_text(hashes: np.ndarray) -> str:
    """Tokens as a string of one code point each (see `codepoints`)."""
    return codepoints(hashes).astype("<u4").tobytes().decode("utf-32-le")
