//! The codec on AVX-512 VBMI without a gather: 64 codes at a time, the
//! map's tables looked up in registers by byte permutes.
//!
//! A gather costs about a cycle per lane on the CPUs measured (AMD Zen 5:
//! a 16-lane gather took about 0.35 ns per element of quantizing, most of
//! it, whatever the indices), and it was most of dequantizing too. VBMI's
//! `vpermi2b` looks up 64 bytes at once in a table of 128 bytes held in two
//! registers. A table of 256 `f32`s is held as four planes of 256 bytes
//! (byte 0 of every entry, byte 1, ...), each plane two `vpermi2b`
//! (indices below and from 128) and a blend on the index's top bit;
//! interleaving the four planes gives the entries' bits ([`Planes`]).
//!
//! - **Dequantizing** looks up the map's values by the codes: the gather's
//!   result to the bit.
//! - **Quantizing** computes the first guess of module `quant_guess` lane by
//!   lane (its small tables in registers), looks up the guess's threshold
//!   by byte permutes, and adds one when the value is at or above it: the
//!   scalar path's codes (the guess is the code or the one below, checked
//!   when the table is built; the threshold is the map's exact one).

use core::arch::x86_64::*;

use crate::quant_guess::{FLOOR_BITS, NEGATIVE_BIAS};
use crate::quant_map::Table;

/// Codes per round: one register of bytes.
const CODES: usize = 64;

/// `f32` lanes per register.
const LANES: usize = 16;

/// Where each code goes before the lookup so that the interleaving, which
/// works within 128-bit lanes, leaves the values in order: position
/// `16 * lane + 4 * r + i` holds code `16 * r + 4 * lane + i` (output
/// register `r`, lane `lane`, element `i` of the lane).
const ORDER: [u8; CODES] = {
    let mut order = [0u8; CODES];
    let mut position = 0;
    while position < CODES {
        let (lane, r, i) = (position / 16, position / 4 % 4, position % 4);
        order[position] = (16 * r + 4 * lane + i) as u8;
        position += 1;
    }
    order
};

/// A table of 256 `f32`s as byte planes, ready for `vpermi2b`:
/// `planes[p][h]` holds byte `p` of the entries `128 * h + 0..128`, in two
/// registers.
struct Planes([[[__m512i; 2]; 2]; 4]);

impl Planes {
    /// The registers of `planes` (a table's byte planes).
    #[inline(always)]
    fn of(planes: &[[u8; 256]; 4]) -> Self {
        let plane = |p: usize, h: usize, half: usize| {
            let start = 128 * h + 64 * half;
            let bytes: [u8; CODES] = planes[p][start..start + CODES]
                .try_into()
                .expect("one register");
            bytemuck::cast::<[u8; CODES], __m512i>(bytes)
        };
        Self(core::array::from_fn(|p| {
            core::array::from_fn(|h| [plane(p, h, 0), plane(p, h, 1)])
        }))
    }

    /// The 64 `f32`s the 64 byte indices of `indices` pick (as bits), in
    /// their order, 16 per register.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    fn look_up(&self, indices: __m512i) -> [__m512i; 4] {
        let order = bytemuck::cast::<[u8; CODES], __m512i>(ORDER);
        let indices = _mm512_permutexvar_epi8(order, indices);
        // Indices from 128 take the upper half of each plane.
        let upper = _mm512_movepi8_mask(indices);
        let [b0, b1, b2, b3] = self.0.map(|[low, high]| {
            let low = _mm512_permutex2var_epi8(low[0], indices, low[1]);
            let high = _mm512_permutex2var_epi8(high[0], indices, high[1]);
            _mm512_mask_blend_epi8(upper, low, high)
        });
        let (b01_low, b01_high) = (_mm512_unpacklo_epi8(b0, b1), _mm512_unpackhi_epi8(b0, b1));
        let (b23_low, b23_high) = (_mm512_unpacklo_epi8(b2, b3), _mm512_unpackhi_epi8(b2, b3));
        [
            _mm512_unpacklo_epi16(b01_low, b23_low),
            _mm512_unpackhi_epi16(b01_low, b23_low),
            _mm512_unpacklo_epi16(b01_high, b23_high),
            _mm512_unpackhi_epi16(b01_high, b23_high),
        ]
    }
}

/// `codes` (at most one block) as values: `map[code] * scale`, the whole
/// rounds of 64 codes here and the rest (fewer than 64) by `rest`.
///
/// # Safety
/// The CPU must have AVX-512F, AVX-512BW and AVX-512 VBMI.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
pub(crate) unsafe fn dequantize(
    table: &Table,
    codes: &[u8],
    scale: f32,
    out: &mut [f32],
    rest: impl FnOnce(&[u8], &mut [f32]),
) {
    let whole = codes.len() / CODES * CODES;
    let planes = Planes::of(&table.value_planes);
    let scale_lanes = _mm512_set1_ps(scale);
    for (codes, out) in codes[..whole]
        .chunks_exact(CODES)
        .zip(out[..whole].chunks_exact_mut(CODES))
    {
        let codes: [u8; CODES] = codes.try_into().expect("one register");
        let values = planes.look_up(bytemuck::cast(codes));
        for (bits, out) in values.into_iter().zip(out.chunks_exact_mut(LANES)) {
            let scaled = _mm512_mul_ps(_mm512_castsi512_ps(bits), scale_lanes);
            out.copy_from_slice(&bytemuck::cast::<_, [f32; LANES]>(scaled));
        }
    }
    rest(&codes[whole..], &mut out[whole..]);
}

/// The codes of `values / scale` into `codes` (at most one block), the
/// whole rounds of 64 here and the rest (fewer than 64) by `rest`: the
/// first guess of module `quant_guess` computed lane by lane (its tables
/// looked up in registers), then the guess's threshold looked up by byte
/// permutes and one comparison, so no gather. The scalar path's codes:
/// the ratio is the scalar path's (one division, NaN to zero, clamped to
/// `[-1, 1]`), the guess is the code or the one below (checked when the
/// table is built), and the comparison is with the map's exact threshold.
///
/// # Safety
/// The CPU must have AVX-512F, AVX-512BW and AVX-512 VBMI.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
pub(crate) unsafe fn quantize(
    table: &Table,
    values: &[f32],
    scale: f32,
    codes: &mut [u8],
    rest: impl FnOnce(&[f32], &mut [u8]),
) {
    let whole = values.len() / CODES * CODES;
    let guess = &table.guess;
    let thresholds = Planes::of(&table.upper_planes);
    let ints = |t: &[i32]| bytemuck::cast::<[i32; LANES], __m512i>(t.try_into().expect("16"));
    let floats = |t: &[f32; LANES]| bytemuck::cast::<[f32; LANES], __m512>(*t);
    let (octave_low, octave_high) = (
        ints(&guess.decade_of_octave[..LANES]),
        ints(&guess.decade_of_octave[LANES..]),
    );
    let (next, next_negative) = (floats(&guess.next), floats(&guess.next_negative));
    let (a, b, cap) = (floats(&guess.a), floats(&guess.b), floats(&guess.cap));
    let scale_lanes = _mm512_set1_ps(scale);
    let (zero, one, minus_one) = (
        _mm512_setzero_ps(),
        _mm512_set1_ps(1.0),
        _mm512_set1_ps(-1.0),
    );
    let negative_bias = _mm512_set1_ps(NEGATIVE_BIAS);
    let magnitude_bits = _mm512_set1_epi32(0x7FFF_FFFF);
    let smallest = _mm512_set1_epi32(FLOOR_BITS as i32);
    let (one_code, top_code) = (_mm512_set1_epi32(1), _mm512_set1_epi32(255));
    let mirror = _mm512_set1_epi32(guess.mirror);
    let zero_bits = _mm512_setzero_si512();
    for (values, codes) in values[..whole]
        .chunks_exact(CODES)
        .zip(codes[..whole].chunks_exact_mut(CODES))
    {
        let mut ratios = [zero; 4];
        let mut guesses = [zero_bits; 4];
        for ((x, ratio_out), guess_out) in values
            .chunks_exact(LANES)
            .zip(&mut ratios)
            .zip(&mut guesses)
        {
            let x: [f32; LANES] = x.try_into().expect("one register");
            let ratio = _mm512_div_ps(bytemuck::cast(x), scale_lanes);
            let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(ratio, ratio);
            let ratio = _mm512_mask_mov_ps(ratio, nan, zero);
            let ratio = _mm512_min_ps(_mm512_max_ps(ratio, minus_one), one);
            // `Guess::code`, lane by lane.
            let bits = _mm512_castps_si512(ratio);
            let negative = _mm512_cmp_epi32_mask::<_MM_CMPINT_LT>(bits, zero_bits);
            let y_bits = _mm512_and_si512(bits, magnitude_bits);
            let y = _mm512_castsi512_ps(y_bits);
            let octave = _mm512_srli_epi32::<23>(_mm512_sub_epi32(
                _mm512_max_epu32(y_bits, smallest),
                smallest,
            ));
            let decade = _mm512_permutex2var_epi32(octave_low, octave, octave_high);
            let boundary = _mm512_mask_blend_ps(
                negative,
                _mm512_permutexvar_ps(decade, next),
                _mm512_permutexvar_ps(decade, next_negative),
            );
            let past = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(y, boundary);
            let decade = _mm512_mask_add_epi32(decade, past, decade, one_code);
            let v = _mm512_fmadd_ps(
                y,
                _mm512_permutexvar_ps(decade, a),
                _mm512_permutexvar_ps(decade, b),
            );
            let v = _mm512_min_ps(v, _mm512_permutexvar_ps(decade, cap));
            let v = _mm512_mask_add_ps(v, negative, v, negative_bias);
            let magnitude_code =
                _mm512_cvt_roundps_epi32::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(v);
            let code = _mm512_mask_sub_epi32(magnitude_code, negative, mirror, magnitude_code);
            let code = _mm512_max_epi32(_mm512_min_epi32(code, top_code), zero_bits);
            *ratio_out = ratio;
            *guess_out = code;
        }
        let bytes = guesses.map(|guess| _mm512_cvtepi32_epi8(guess));
        let packed = _mm512_inserti32x4::<3>(
            _mm512_inserti32x4::<2>(
                _mm512_inserti32x4::<1>(_mm512_castsi128_si512(bytes[0]), bytes[1]),
                bytes[2],
            ),
            bytes[3],
        );
        let above = thresholds.look_up(packed);
        for (((ratio, guess), threshold), codes) in ratios
            .into_iter()
            .zip(guesses)
            .zip(above)
            .zip(codes.chunks_exact_mut(LANES))
        {
            let past = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(ratio, _mm512_castsi512_ps(threshold));
            let code = _mm512_mask_add_epi32(guess, past, guess, one_code);
            codes.copy_from_slice(&bytemuck::cast::<_, [u8; LANES]>(_mm512_cvtepi32_epi8(
                code,
            )));
        }
    }
    rest(&values[whole..], &mut codes[whole..]);
}
