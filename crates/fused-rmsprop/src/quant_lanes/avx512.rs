//! The codec on AVX-512: sixteen `f32` lanes, masks in mask registers.

use core::arch::x86_64::{
    __m128i, __m512, _CMP_LT_OQ, _CMP_UNORD_Q, _MM_CMPINT_LT, _MM_CMPINT_NLT,
};

use pulp::x86::V4;

use crate::quant_map::{BUCKET_SHIFT, BUCKETS_PER_SIGN, KEY_MASK, SMALLEST_BITS, Table};

const LANES: usize = 16;

/// One register's worth of `x` (exactly [`LANES`] elements).
#[inline(always)]
fn load(x: &[f32]) -> __m512 {
    let array: [f32; LANES] = x.try_into().expect("one register");
    bytemuck::cast(array)
}

/// `codes` (at most one block) as values: `map[code] * scale`.
#[inline(always)]
pub(crate) fn dequantize(v4: V4, table: &Table, codes: &[u8], scale: f32, out: &mut [f32]) {
    let whole = codes.len() / LANES * LANES;
    let scale_lanes = v4.avx512f._mm512_set1_ps(scale);
    for (codes, out) in codes[..whole]
        .chunks_exact(LANES)
        .zip(out[..whole].chunks_exact_mut(LANES))
    {
        let bytes: [u8; LANES] = codes.try_into().expect("one register");
        let indices = v4
            .avx512f
            ._mm512_cvtepu8_epi32(bytemuck::cast::<_, __m128i>(bytes));
        // SAFETY: `v4` proves AVX-512F. Every index is a `u8`, below the
        // 256 entries of `table.values`, whose 4-byte elements the gather
        // reads (scale 4).
        let values = unsafe {
            v4.avx512f
                ._mm512_i32gather_ps::<4>(indices, table.values.as_ptr())
        };
        let scaled = v4.avx512f._mm512_mul_ps(values, scale_lanes);
        out.copy_from_slice(&bytemuck::cast::<_, [f32; LANES]>(scaled));
    }
    super::dequantize_tail(table, &codes[whole..], scale, &mut out[whole..]);
}

/// The largest finite magnitude of `values` (0 when there is none).
#[inline(always)]
pub(crate) fn largest_finite(v4: V4, values: &[f32]) -> f32 {
    let whole = values.len() / LANES * LANES;
    let infinity = v4.avx512f._mm512_set1_ps(f32::INFINITY);
    let mut largest = v4.avx512f._mm512_setzero_ps();
    for x in values[..whole].chunks_exact(LANES) {
        let magnitude = v4.avx512f._mm512_abs_ps(load(x));
        // Below +Inf: finite (a NaN compares false).
        let finite = v4
            .avx512f
            ._mm512_cmp_ps_mask::<_CMP_LT_OQ>(magnitude, infinity);
        largest = v4
            .avx512f
            ._mm512_mask_max_ps(largest, finite, largest, magnitude);
    }
    let largest = v4.avx512f._mm512_reduce_max_ps(largest);
    super::largest_finite_tail(&values[whole..], largest)
}

/// The codes of `values / scale` into `codes`.
#[inline(always)]
pub(crate) fn quantize(v4: V4, table: &Table, values: &[f32], scale: f32, codes: &mut [u8]) {
    let f = v4.avx512f;
    let whole = values.len() / LANES * LANES;
    let scale_lanes = f._mm512_set1_ps(scale);
    let (zero, one, minus_one) = (
        f._mm512_setzero_ps(),
        f._mm512_set1_ps(1.0),
        f._mm512_set1_ps(-1.0),
    );
    let magnitude_bits = f._mm512_set1_epi32(0x7FFF_FFFF);
    let smallest = f._mm512_set1_epi32(SMALLEST_BITS as i32);
    let key_mask = f._mm512_set1_epi32(KEY_MASK as i32);
    let negative_offset = f._mm512_set1_epi32(BUCKETS_PER_SIGN as i32);
    let byte = f._mm512_set1_epi32(0xFF);
    let one_code = f._mm512_set1_epi32(1);
    let zero_bits = f._mm512_setzero_si512();
    for (x, codes) in values[..whole]
        .chunks_exact(LANES)
        .zip(codes[..whole].chunks_exact_mut(LANES))
    {
        let ratio = f._mm512_div_ps(load(x), scale_lanes);
        let nan = f._mm512_cmp_ps_mask::<_CMP_UNORD_Q>(ratio, ratio);
        let ratio = f._mm512_mask_mov_ps(ratio, nan, zero);
        let ratio = f._mm512_min_ps(f._mm512_max_ps(ratio, minus_one), one);
        // `quant_map::bucket_and_key`, lane by lane.
        let bits = f._mm512_castps_si512(ratio);
        let magnitude = f._mm512_max_epu32(f._mm512_and_si512(bits, magnitude_bits), smallest);
        let bucket = f._mm512_srli_epi32::<BUCKET_SHIFT>(f._mm512_sub_epi32(magnitude, smallest));
        let key = f._mm512_and_si512(magnitude, key_mask);
        let negative = f._mm512_cmp_epi32_mask::<_MM_CMPINT_LT>(bits, zero_bits);
        let bucket = f._mm512_mask_add_epi32(bucket, negative, bucket, negative_offset);
        let key = f._mm512_mask_xor_epi32(key, negative, key, key_mask);
        // SAFETY: `v4` proves AVX-512F. `bucket` is below
        // `2 * BUCKETS_PER_SIGN`, the length of `table.buckets`, whose
        // 4-byte elements the gather reads (scale 4).
        let entry =
            unsafe { f._mm512_i32gather_epi32::<4>(bucket, table.buckets.as_ptr().cast::<i32>()) };
        let threshold = f._mm512_srli_epi32::<8>(entry);
        let above = f._mm512_cmp_epu32_mask::<_MM_CMPINT_NLT>(key, threshold);
        let code = f._mm512_and_si512(entry, byte);
        let code = f._mm512_mask_add_epi32(code, above, code, one_code);
        let packed: [u8; LANES] = bytemuck::cast(f._mm512_cvtepi32_epi8(code));
        codes.copy_from_slice(&packed);
    }
    super::quantize_tail(table, &values[whole..], scale, &mut codes[whole..]);
}
