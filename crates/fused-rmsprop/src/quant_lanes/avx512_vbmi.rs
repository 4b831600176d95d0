//! Dequantizing on AVX-512 VBMI without a gather: 64 codes at a time, the
//! map looked up in registers by byte permutes.
//!
//! A gather costs about one cycle per lane on the CPUs measured (AMD Zen 4:
//! a 16-lane `vgatherdps` from the 1 KiB map kept about 20 cycles), which
//! made it most of dequantizing. VBMI's `vpermi2b` looks up 64 bytes at
//! once in a table of 128 bytes held in two registers. The map's 256 `f32`
//! values are held as four planes of 256 bytes (byte 0 of every value,
//! byte 1, ...), each plane two `vpermi2b` (codes below and from 128) and
//! a blend on the code's top bit; interleaving the four planes gives the
//! values' bits, which are the map's own, so the result is the gather's to
//! the bit.

use core::arch::x86_64::{
    __m512i, _mm512_mask_blend_epi8, _mm512_movepi8_mask, _mm512_permutex2var_epi8,
    _mm512_permutexvar_epi8, _mm512_unpackhi_epi8, _mm512_unpackhi_epi16, _mm512_unpacklo_epi8,
    _mm512_unpacklo_epi16,
};

use crate::quant_map::Table;

/// Codes per round: one register of bytes.
const CODES: usize = 64;

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

/// The map's values as byte planes, ready for `vpermi2b`: `planes[p][h]`
/// holds byte `p` of the values `128 * h + 0..128`, in two registers.
struct Planes([[[__m512i; 2]; 2]; 4]);

impl Planes {
    #[inline(always)]
    fn of(table: &Table) -> Self {
        let plane = |p: usize, h: usize, half: usize| {
            let start = 128 * h + 64 * half;
            let bytes: [u8; CODES] = table.planes[p][start..start + CODES]
                .try_into()
                .expect("one register");
            bytemuck::cast::<[u8; CODES], __m512i>(bytes)
        };
        Self(core::array::from_fn(|p| {
            core::array::from_fn(|h| [plane(p, h, 0), plane(p, h, 1)])
        }))
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
    let Planes(planes) = Planes::of(table);
    let order = bytemuck::cast::<[u8; CODES], __m512i>(ORDER);
    let scale_lanes = core::arch::x86_64::_mm512_set1_ps(scale);
    for (codes, out) in codes[..whole]
        .chunks_exact(CODES)
        .zip(out[..whole].chunks_exact_mut(CODES))
    {
        let codes: [u8; CODES] = codes.try_into().expect("one register");
        let codes = _mm512_permutexvar_epi8(order, bytemuck::cast(codes));
        // Codes from 128 take the upper half of each plane.
        let upper = _mm512_movepi8_mask(codes);
        let [b0, b1, b2, b3] = planes.map(|[low, high]| {
            let low = _mm512_permutex2var_epi8(low[0], codes, low[1]);
            let high = _mm512_permutex2var_epi8(high[0], codes, high[1]);
            _mm512_mask_blend_epi8(upper, low, high)
        });
        let (b01_low, b01_high) = (_mm512_unpacklo_epi8(b0, b1), _mm512_unpackhi_epi8(b0, b1));
        let (b23_low, b23_high) = (_mm512_unpacklo_epi8(b2, b3), _mm512_unpackhi_epi8(b2, b3));
        let values = [
            _mm512_unpacklo_epi16(b01_low, b23_low),
            _mm512_unpackhi_epi16(b01_low, b23_low),
            _mm512_unpacklo_epi16(b01_high, b23_high),
            _mm512_unpackhi_epi16(b01_high, b23_high),
        ];
        for (bits, out) in values.into_iter().zip(out.chunks_exact_mut(16)) {
            let scaled = core::arch::x86_64::_mm512_mul_ps(
                core::arch::x86_64::_mm512_castsi512_ps(bits),
                scale_lanes,
            );
            out.copy_from_slice(&bytemuck::cast::<_, [f32; 16]>(scaled));
        }
    }
    rest(&codes[whole..], &mut out[whole..]);
}
