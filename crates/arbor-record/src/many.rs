//! Keyed BLAKE3 of many short inputs at once: the hashing under a full
//! build, where millions of rows of a few hundred bytes each are hashed.
//!
//! The `blake3` crate spreads one long input over SIMD lanes (1 KiB chunks
//! side by side) but hashes a short input one 64-byte block at a time, at a
//! fixed cost per call: 260 ns for a 200-byte row and 114 ns for a 9-byte
//! key on the 2-core bench machine, about a fifth of a build's CPU time.
//! Here every SIMD lane hashes a different input instead: sixteen rows per
//! AVX-512 compression (51 ns per row and 19 ns per key there), or eight
//! with AVX2.
//!
//! The output is exactly `blake3::keyed_hash` of each input (proptests pin
//! it, for each path this CPU has). Inputs over one chunk (1 KiB), the
//! last few of a call, and every input on a CPU with neither AVX-512 (F and
//! BW) nor AVX2 go through `blake3::keyed_hash` one by one.

/// The largest input hashed in a SIMD lane: one BLAKE3 chunk, whose
/// blocks all take chunk counter 0.
const MAX_LANE_INPUT: usize = 1024;

/// Hashes each of `inputs` under `key` into the same slot of `out`:
/// `out[i] = blake3::keyed_hash(key, inputs[i])`.
///
/// # Panics
///
/// If `out` is shorter than `inputs`.
pub fn keyed_hash_many(key: &[u8; 32], inputs: &[&[u8]], out: &mut [[u8; 32]]) {
    hash_on(Simd::detect(), key, inputs, out)
}

/// The SIMD paths a call may take: only ever those this CPU has (see
/// [`Simd::detect`]; the tests turn paths off, never on).
#[derive(Debug, Clone, Copy)]
struct Simd {
    avx512: bool,
    avx2: bool,
}

impl Simd {
    /// The paths this CPU runs (detected once, then cached by std).
    fn detect() -> Simd {
        #[cfg(target_arch = "x86_64")]
        {
            Simd {
                avx512: is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw"),
                avx2: is_x86_feature_detected!("avx2"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            Simd {
                avx512: false,
                avx2: false,
            }
        }
    }
}

fn hash_on(simd: Simd, key: &[u8; 32], inputs: &[&[u8]], out: &mut [[u8; 32]]) {
    assert!(out.len() >= inputs.len(), "one output per input");
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    {
        let words = x86::key_words(key);
        if simd.avx512 {
            done += in_groups(x86::LANES_512, key, inputs, out, |ins, outs| {
                // SAFETY: `simd.avx512` is set only on CPUs with the
                // features `hash16` is compiled for.
                unsafe { x86::hash16(&words, ins, outs) }
            });
        }
        if simd.avx2 {
            done += in_groups(
                x86::LANES_256,
                key,
                &inputs[done..],
                &mut out[done..],
                |ins, outs| {
                    // SAFETY: `simd.avx2` is set only on CPUs with AVX2.
                    unsafe { x86::hash8(&words, ins, outs) }
                },
            );
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = simd;
    for (i, o) in inputs[done..].iter().zip(&mut out[done..]) {
        *o = *blake3::keyed_hash(key, i).as_bytes();
    }
}

/// Hashes `inputs` in whole groups of `lanes` with `hash` (one by one for a
/// group holding an input over [`MAX_LANE_INPUT`]); returns how many.
fn in_groups(
    lanes: usize,
    key: &[u8; 32],
    inputs: &[&[u8]],
    out: &mut [[u8; 32]],
    mut hash: impl FnMut(&[&[u8]], &mut [[u8; 32]]),
) -> usize {
    let mut done = 0;
    for (ins, outs) in inputs.chunks_exact(lanes).zip(out.chunks_exact_mut(lanes)) {
        if ins.iter().all(|i| i.len() <= MAX_LANE_INPUT) {
            hash(ins, outs);
        } else {
            for (i, o) in ins.iter().zip(outs) {
                *o = *blake3::keyed_hash(key, i).as_bytes();
            }
        }
        done += lanes;
    }
    done
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! Sixteen inputs per compression with AVX-512, eight with AVX2: lane
    //! `l` of every vector belongs to input `l`.

    use std::arch::x86_64::*;

    use super::MAX_LANE_INPUT;

    /// Inputs per compression with AVX-512 ([`hash16`]) and AVX2 ([`hash8`]).
    pub const LANES_512: usize = 16;
    pub const LANES_256: usize = 8;

    const BLOCK: usize = 64;
    const IV: [u32; 8] = [
        0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A, 0x510E527F, 0x9B05688C, 0x1F83D9AB,
        0x5BE0CD19,
    ];
    const CHUNK_START: u32 = 1;
    const CHUNK_END: u32 = 2;
    const ROOT: u32 = 8;
    const KEYED_HASH: u32 = 16;
    /// The message word order of each of the seven rounds: the identity,
    /// then BLAKE3's permutation applied once per round.
    const SCHEDULE: [[usize; 16]; 7] = {
        const PERMUTATION: [usize; 16] = [2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8];
        let mut s = [[0usize; 16]; 7];
        let mut i = 0;
        while i < 16 {
            s[0][i] = i;
            i += 1;
        }
        let mut r = 1;
        while r < 7 {
            let mut i = 0;
            while i < 16 {
                s[r][i] = s[r - 1][PERMUTATION[i]];
                i += 1;
            }
            r += 1;
        }
        s
    };

    /// The key as BLAKE3's little-endian words.
    pub fn key_words(key: &[u8; 32]) -> [u32; 8] {
        std::array::from_fn(|i| {
            u32::from_le_bytes([key[4 * i], key[4 * i + 1], key[4 * i + 2], key[4 * i + 3]])
        })
    }

    /// What hashing many inputs side by side needs of a vector of 32-bit
    /// words, one word per lane: BLAKE3's arithmetic, per-lane choices,
    /// and loading one 64-byte block per lane as sixteen message words.
    ///
    /// The methods wrap intrinsics. They are only called from inside
    /// [`hash16`] and [`hash8`], which are compiled for (and only run on
    /// CPUs with) the features those intrinsics need, and into which they
    /// are inlined.
    trait Words: Copy {
        /// Lanes per vector.
        const LANES: usize;
        fn splat(x: u32) -> Self;
        /// The first [`Words::LANES`] words of `words`.
        fn load(words: &[u32]) -> Self;
        /// Into the first [`Words::LANES`] words of `words`.
        fn store(self, words: &mut [u32]);
        fn add(self, o: Self) -> Self;
        fn xor(self, o: Self) -> Self;
        fn ror<const R: u32>(self) -> Self;
        /// Within each 128-bit part: words 0, 1 of `self` and `o`
        /// interleaved (`unpacklo_epi32`); `hi32` words 2, 3.
        fn lo32(self, o: Self) -> Self;
        fn hi32(self, o: Self) -> Self;
        /// Within each 128-bit part: the low 64 bits of `self` then of
        /// `o` (`unpacklo_epi64`); `hi64` the high ones.
        fn lo64(self, o: Self) -> Self;
        fn hi64(self, o: Self) -> Self;
        /// Per lane: the byte count of the block at `at` of an input of
        /// `self` bytes, `clamp(self - at, 0, 64)`.
        fn block_len(self, at: u32) -> Self;
        /// Per lane: `yes` where `self == x`, else `no`.
        fn where_eq(self, x: u32, yes: Self, no: Self) -> Self;
        /// Per lane: `yes` where `self > x`, else `no`.
        fn where_gt(self, x: u32, yes: Self, no: Self) -> Self;
        /// The block at byte `at` of each input (zero-padded past its
        /// end), as message words: word `w` of lane `l` is word `w` of
        /// input `l`'s block.
        fn message(inputs: &[&[u8]], at: usize) -> [Self; 16];
    }

    impl Words for __m512i {
        const LANES: usize = LANES_512;
        #[inline(always)]
        fn splat(x: u32) -> Self {
            // SAFETY (every method): see `Words`; loads and stores are
            // unaligned, within slices checked to be long enough.
            unsafe { _mm512_set1_epi32(x as i32) }
        }
        #[inline(always)]
        fn load(words: &[u32]) -> Self {
            assert!(words.len() >= Self::LANES);
            unsafe { _mm512_loadu_si512(words.as_ptr().cast()) }
        }
        #[inline(always)]
        fn store(self, words: &mut [u32]) {
            assert!(words.len() >= Self::LANES);
            unsafe { _mm512_storeu_si512(words.as_mut_ptr().cast(), self) }
        }
        #[inline(always)]
        fn add(self, o: Self) -> Self {
            unsafe { _mm512_add_epi32(self, o) }
        }
        #[inline(always)]
        fn xor(self, o: Self) -> Self {
            unsafe { _mm512_xor_si512(self, o) }
        }
        #[inline(always)]
        fn ror<const R: u32>(self) -> Self {
            unsafe {
                match R {
                    16 => _mm512_ror_epi32::<16>(self),
                    12 => _mm512_ror_epi32::<12>(self),
                    8 => _mm512_ror_epi32::<8>(self),
                    _ => _mm512_ror_epi32::<7>(self),
                }
            }
        }
        #[inline(always)]
        fn lo32(self, o: Self) -> Self {
            unsafe { _mm512_unpacklo_epi32(self, o) }
        }
        #[inline(always)]
        fn hi32(self, o: Self) -> Self {
            unsafe { _mm512_unpackhi_epi32(self, o) }
        }
        #[inline(always)]
        fn lo64(self, o: Self) -> Self {
            unsafe { _mm512_unpacklo_epi64(self, o) }
        }
        #[inline(always)]
        fn hi64(self, o: Self) -> Self {
            unsafe { _mm512_unpackhi_epi64(self, o) }
        }
        #[inline(always)]
        fn block_len(self, at: u32) -> Self {
            unsafe {
                let n = _mm512_sub_epi32(self, _mm512_set1_epi32(at as i32));
                let n = _mm512_max_epi32(n, _mm512_setzero_si512());
                _mm512_min_epi32(n, _mm512_set1_epi32(BLOCK as i32))
            }
        }
        #[inline(always)]
        fn where_eq(self, x: u32, yes: Self, no: Self) -> Self {
            unsafe {
                let k = _mm512_cmpeq_epi32_mask(self, _mm512_set1_epi32(x as i32));
                _mm512_mask_blend_epi32(k, no, yes)
            }
        }
        #[inline(always)]
        fn where_gt(self, x: u32, yes: Self, no: Self) -> Self {
            unsafe {
                let k = _mm512_cmpgt_epi32_mask(self, _mm512_set1_epi32(x as i32));
                _mm512_mask_blend_epi32(k, no, yes)
            }
        }
        #[inline(always)]
        fn message(inputs: &[&[u8]], at: usize) -> [Self; 16] {
            let rows: [Self; 16] = std::array::from_fn(|l| {
                let input = inputs[l];
                let start = at.min(input.len());
                let n = (input.len() - start).min(BLOCK);
                let mask = if n == BLOCK {
                    u64::MAX
                } else {
                    (1u64 << n) - 1
                };
                // `start <= input.len()`, and the mask selects only the
                // `n` bytes from `start` that the input holds: masked-off
                // bytes are neither read nor faulted on, and come back
                // zero (the padding of a short last block).
                unsafe { _mm512_maskz_loadu_epi8(mask, input.as_ptr().add(start).cast()) }
            });
            let mut q = [[rows[0]; 4]; 4];
            quads(&rows, &mut q);
            // Then the 128-bit parts transposed across the four quads.
            let mut m = rows;
            for c in 0..4 {
                unsafe {
                    let x0 = _mm512_shuffle_i32x4::<0x44>(q[0][c], q[1][c]);
                    let x1 = _mm512_shuffle_i32x4::<0xEE>(q[0][c], q[1][c]);
                    let y0 = _mm512_shuffle_i32x4::<0x44>(q[2][c], q[3][c]);
                    let y1 = _mm512_shuffle_i32x4::<0xEE>(q[2][c], q[3][c]);
                    m[c] = _mm512_shuffle_i32x4::<0x88>(x0, y0);
                    m[4 + c] = _mm512_shuffle_i32x4::<0xDD>(x0, y0);
                    m[8 + c] = _mm512_shuffle_i32x4::<0x88>(x1, y1);
                    m[12 + c] = _mm512_shuffle_i32x4::<0xDD>(x1, y1);
                }
            }
            m
        }
    }

    impl Words for __m256i {
        const LANES: usize = LANES_256;
        #[inline(always)]
        fn splat(x: u32) -> Self {
            unsafe { _mm256_set1_epi32(x as i32) }
        }
        #[inline(always)]
        fn load(words: &[u32]) -> Self {
            assert!(words.len() >= Self::LANES);
            unsafe { _mm256_loadu_si256(words.as_ptr().cast()) }
        }
        #[inline(always)]
        fn store(self, words: &mut [u32]) {
            assert!(words.len() >= Self::LANES);
            unsafe { _mm256_storeu_si256(words.as_mut_ptr().cast(), self) }
        }
        #[inline(always)]
        fn add(self, o: Self) -> Self {
            unsafe { _mm256_add_epi32(self, o) }
        }
        #[inline(always)]
        fn xor(self, o: Self) -> Self {
            unsafe { _mm256_xor_si256(self, o) }
        }
        #[inline(always)]
        fn ror<const R: u32>(self) -> Self {
            // AVX2 has no rotate: two shifts and an or.
            unsafe {
                let (right, left) = match R {
                    16 => (_mm256_srli_epi32::<16>(self), _mm256_slli_epi32::<16>(self)),
                    12 => (_mm256_srli_epi32::<12>(self), _mm256_slli_epi32::<20>(self)),
                    8 => (_mm256_srli_epi32::<8>(self), _mm256_slli_epi32::<24>(self)),
                    _ => (_mm256_srli_epi32::<7>(self), _mm256_slli_epi32::<25>(self)),
                };
                _mm256_or_si256(right, left)
            }
        }
        #[inline(always)]
        fn lo32(self, o: Self) -> Self {
            unsafe { _mm256_unpacklo_epi32(self, o) }
        }
        #[inline(always)]
        fn hi32(self, o: Self) -> Self {
            unsafe { _mm256_unpackhi_epi32(self, o) }
        }
        #[inline(always)]
        fn lo64(self, o: Self) -> Self {
            unsafe { _mm256_unpacklo_epi64(self, o) }
        }
        #[inline(always)]
        fn hi64(self, o: Self) -> Self {
            unsafe { _mm256_unpackhi_epi64(self, o) }
        }
        #[inline(always)]
        fn block_len(self, at: u32) -> Self {
            unsafe {
                let n = _mm256_sub_epi32(self, _mm256_set1_epi32(at as i32));
                let n = _mm256_max_epi32(n, _mm256_setzero_si256());
                _mm256_min_epi32(n, _mm256_set1_epi32(BLOCK as i32))
            }
        }
        #[inline(always)]
        fn where_eq(self, x: u32, yes: Self, no: Self) -> Self {
            unsafe {
                let mask = _mm256_cmpeq_epi32(self, _mm256_set1_epi32(x as i32));
                _mm256_blendv_epi8(no, yes, mask)
            }
        }
        #[inline(always)]
        fn where_gt(self, x: u32, yes: Self, no: Self) -> Self {
            unsafe {
                let mask = _mm256_cmpgt_epi32(self, _mm256_set1_epi32(x as i32));
                _mm256_blendv_epi8(no, yes, mask)
            }
        }
        #[inline(always)]
        fn message(inputs: &[&[u8]], at: usize) -> [Self; 16] {
            // Each block as two rows of eight words: a whole block read
            // where it lies, a short last one from a zero-padded copy.
            let mut first = [unsafe { _mm256_setzero_si256() }; 8];
            let mut second = first;
            let mut pad = [0u8; BLOCK];
            for l in 0..Self::LANES {
                let input = inputs[l];
                let rest = &input[at.min(input.len())..];
                let block: &[u8] = if rest.len() >= BLOCK {
                    &rest[..BLOCK]
                } else {
                    pad.fill(0);
                    pad[..rest.len()].copy_from_slice(rest);
                    &pad
                };
                // `block` holds 64 bytes.
                unsafe {
                    first[l] = _mm256_loadu_si256(block.as_ptr().cast());
                    second[l] = _mm256_loadu_si256(block.as_ptr().add(32).cast());
                }
            }
            let (low, high) = (transpose8(first), transpose8(second));
            std::array::from_fn(|w| if w < 8 { low[w] } else { high[w - 8] })
        }
    }

    /// The first two steps of transposing rows of words, one row per
    /// vector: for each four rows `4j..4j+3`, `q[j][c]` holds word `4k+c`
    /// of the four rows in its 128-bit part `k`. What is left is moving
    /// whole 128-bit parts, which differs with the vector's width.
    #[inline(always)]
    fn quads<W: Words>(rows: &[W], q: &mut [[W; 4]]) {
        for (r, q) in rows.chunks_exact(4).zip(q) {
            let (a, b) = (r[0].lo32(r[1]), r[2].lo32(r[3]));
            let (c, d) = (r[0].hi32(r[1]), r[2].hi32(r[3]));
            *q = [a.lo64(b), a.hi64(b), c.lo64(d), c.hi64(d)];
        }
    }

    /// Eight rows of eight words, one per vector, as eight vectors of one
    /// word each (an 8×8 transpose of 32-bit words).
    #[inline(always)]
    fn transpose8(r: [__m256i; 8]) -> [__m256i; 8] {
        // u[j][c]: word c (low half) and word 4+c (high half) of rows
        // 4j..4j+3.
        let mut u = [[r[0]; 4]; 2];
        quads(&r, &mut u);
        let mut m = r;
        for c in 0..4 {
            // SAFETY: see `Words`.
            unsafe {
                m[c] = _mm256_permute2x128_si256::<0x20>(u[0][c], u[1][c]);
                m[4 + c] = _mm256_permute2x128_si256::<0x31>(u[0][c], u[1][c]);
            }
        }
        m
    }

    #[inline(always)]
    fn g<W: Words>(v: &mut [W; 16], [a, b, c, d]: [usize; 4], x: W, y: W) {
        v[a] = v[a].add(v[b]).add(x);
        v[d] = v[d].xor(v[a]).ror::<16>();
        v[c] = v[c].add(v[d]);
        v[b] = v[b].xor(v[c]).ror::<12>();
        v[a] = v[a].add(v[b]).add(y);
        v[d] = v[d].xor(v[a]).ror::<8>();
        v[c] = v[c].add(v[d]);
        v[b] = v[b].xor(v[c]).ror::<7>();
    }

    /// BLAKE3's compression of one block per lane (chunk counter 0): the
    /// next chaining value of each lane.
    #[inline(always)]
    fn compress<W: Words>(cv: &[W; 8], m: &[W; 16], len: W, flags: W) -> [W; 8] {
        let zero = W::splat(0);
        let mut v = [
            cv[0],
            cv[1],
            cv[2],
            cv[3],
            cv[4],
            cv[5],
            cv[6],
            cv[7],
            W::splat(IV[0]),
            W::splat(IV[1]),
            W::splat(IV[2]),
            W::splat(IV[3]),
            zero, // chunk counter, low word
            zero, // chunk counter, high word
            len,
            flags,
        ];
        for s in &SCHEDULE {
            g(&mut v, [0, 4, 8, 12], m[s[0]], m[s[1]]);
            g(&mut v, [1, 5, 9, 13], m[s[2]], m[s[3]]);
            g(&mut v, [2, 6, 10, 14], m[s[4]], m[s[5]]);
            g(&mut v, [3, 7, 11, 15], m[s[6]], m[s[7]]);
            g(&mut v, [0, 5, 10, 15], m[s[8]], m[s[9]]);
            g(&mut v, [1, 6, 11, 12], m[s[10]], m[s[11]]);
            g(&mut v, [2, 7, 8, 13], m[s[12]], m[s[13]]);
            g(&mut v, [3, 4, 9, 14], m[s[14]], m[s[15]]);
        }
        std::array::from_fn(|i| v[i].xor(v[i + 8]))
    }

    /// Keyed BLAKE3 of `L` inputs of at most [`MAX_LANE_INPUT`] bytes, one
    /// per lane of `W`.
    #[inline(always)]
    fn hash_lanes<W: Words, const L: usize>(
        key: &[u32; 8],
        inputs: &[&[u8]],
        out: &mut [[u8; 32]],
    ) {
        assert!(W::LANES == L && inputs.len() == L && out.len() == L);
        assert!(inputs.iter().all(|i| i.len() <= MAX_LANE_INPUT));
        let blocks: [u32; L] =
            std::array::from_fn(|l| inputs[l].len().div_ceil(BLOCK).max(1) as u32);
        let most = blocks.iter().copied().max().unwrap_or(1);
        let lens: [u32; L] = std::array::from_fn(|l| inputs[l].len() as u32);
        let (lens, blocks) = (W::load(&lens), W::load(&blocks));
        let mut cv: [W; 8] = std::array::from_fn(|i| W::splat(key[i]));
        for b in 0..most {
            let at = b * BLOCK as u32;
            let m = W::message(inputs, at as usize);
            // Per lane: the flags of the block's place in its input (the
            // last block ends the chunk and is the root), its byte count,
            // and whether the input has this block at all (a finished
            // input keeps its output).
            let every = KEYED_HASH | if b == 0 { CHUNK_START } else { 0 };
            let flags = blocks.where_eq(b + 1, W::splat(every | CHUNK_END | ROOT), W::splat(every));
            let next = compress(&cv, &m, lens.block_len(at), flags);
            for (cv, next) in cv.iter_mut().zip(next) {
                *cv = blocks.where_gt(b, next, *cv);
            }
        }
        let mut words = [[0u32; L]; 8];
        for (w, v) in words.iter_mut().zip(cv) {
            v.store(w);
        }
        for (l, o) in out.iter_mut().enumerate() {
            for (i, w) in words.iter().enumerate() {
                o[4 * i..4 * i + 4].copy_from_slice(&w[l].to_le_bytes());
            }
        }
    }

    /// Keyed BLAKE3 of sixteen inputs of at most [`MAX_LANE_INPUT`] bytes.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub fn hash16(key: &[u32; 8], inputs: &[&[u8]], out: &mut [[u8; 32]]) {
        hash_lanes::<__m512i, LANES_512>(key, inputs, out)
    }

    /// Keyed BLAKE3 of eight inputs of at most [`MAX_LANE_INPUT`] bytes.
    #[target_feature(enable = "avx2")]
    pub fn hash8(key: &[u32; 8], inputs: &[&[u8]], out: &mut [[u8; 32]]) {
        hash_lanes::<__m256i, LANES_256>(key, inputs, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Every path this CPU has: all its SIMD, AVX2 alone, none.
    fn paths() -> [Simd; 3] {
        let all = Simd::detect();
        [
            all,
            Simd {
                avx512: false,
                ..all
            },
            Simd {
                avx512: false,
                avx2: false,
            },
        ]
    }

    fn check(key: &[u8; 32], inputs: &[Vec<u8>]) {
        let slices: Vec<&[u8]> = inputs.iter().map(Vec::as_slice).collect();
        for simd in paths() {
            let mut out = vec![[0u8; 32]; slices.len()];
            hash_on(simd, key, &slices, &mut out);
            for (i, (input, o)) in inputs.iter().zip(&out).enumerate() {
                assert_eq!(
                    o,
                    blake3::keyed_hash(key, input).as_bytes(),
                    "{simd:?}: input {i} of {} bytes",
                    input.len()
                );
            }
        }
    }

    #[test]
    fn every_length_up_to_a_chunk_and_past_it_matches_blake3() {
        // Lengths 0..=1100 side by side: empty, partial and whole last
        // blocks, one chunk exactly, and inputs past a chunk (the fallback)
        // in the same group as short ones.
        let inputs: Vec<Vec<u8>> = (0..=1100usize)
            .map(|n| (0..n).map(|i| (i * 31 + n) as u8).collect())
            .collect();
        check(&[9; 32], &inputs);
        let reversed: Vec<Vec<u8>> = inputs.into_iter().rev().collect();
        check(&[1; 32], &reversed);
    }

    proptest! {
        #[test]
        fn equals_keyed_hash_one_by_one(
            key in any::<[u8; 32]>(),
            inputs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..70),
        ) {
            check(&key, &inputs);
        }
    }
}
