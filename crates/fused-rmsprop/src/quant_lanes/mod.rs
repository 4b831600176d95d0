//! 8-bit state's codes on SIMD registers: the block functions of module
//! `blockwise8` several `f32` elements at a time, with gathers from the
//! map's tables, on AVX-512 (sixteen lanes) and AVX2 (eight), and
//! dequantizing by byte permutes instead of a gather where the CPU has
//! AVX-512 VBMI. Each lane performs the scalar path's operations (one
//! division, exact comparisons, table lookups), so the codes and values
//! are the scalar path's bits; the elements after the last whole register
//! go through the scalar path itself.

mod avx2;
mod avx512;
mod avx512_vbmi;

use pulp::x86::{V3, V4};

use crate::quant_map::{self, Table};

/// An instruction set with the codec on its registers.
pub(crate) trait CodecLanes: Copy {
    /// `codes` (at most one block) as values: `map[code] * scale`.
    fn dequantize(self, table: &Table, codes: &[u8], scale: f32, out: &mut [f32]);
    /// The largest finite magnitude of `values` (0 when there is none).
    fn largest_finite(self, values: &[f32]) -> f32;
    /// The codes of `values / scale` into `codes`.
    fn quantize(self, table: &Table, values: &[f32], scale: f32, codes: &mut [u8]);
}

/// Whether the CPU has AVX-512 VBMI (with AVX-512BW, which the VBMI path
/// uses too): std caches the answer, so asking per block costs a load.
#[inline(always)]
fn has_vbmi() -> bool {
    std::arch::is_x86_feature_detected!("avx512vbmi")
        && std::arch::is_x86_feature_detected!("avx512bw")
}

impl CodecLanes for V4 {
    #[inline(always)]
    fn dequantize(self, table: &Table, codes: &[u8], scale: f32, out: &mut [f32]) {
        if has_vbmi() {
            let rest = |codes: &[u8], out: &mut [f32]| {
                avx512::dequantize(self, table, codes, scale, out);
            };
            // SAFETY: `self` proves AVX-512F, and `has_vbmi` checked
            // AVX-512BW and VBMI on this CPU, the features the function
            // is compiled for.
            unsafe { avx512_vbmi::dequantize(table, codes, scale, out, rest) };
        } else {
            avx512::dequantize(self, table, codes, scale, out);
        }
    }
    #[inline(always)]
    fn largest_finite(self, values: &[f32]) -> f32 {
        avx512::largest_finite(self, values)
    }
    #[inline(always)]
    fn quantize(self, table: &Table, values: &[f32], scale: f32, codes: &mut [u8]) {
        if has_vbmi() {
            let rest = |values: &[f32], codes: &mut [u8]| {
                avx512::quantize(self, table, values, scale, codes);
            };
            // SAFETY: as in `dequantize` above.
            unsafe { avx512_vbmi::quantize(table, values, scale, codes, rest) };
        } else {
            avx512::quantize(self, table, values, scale, codes);
        }
    }
}

impl CodecLanes for V3 {
    #[inline(always)]
    fn dequantize(self, table: &Table, codes: &[u8], scale: f32, out: &mut [f32]) {
        avx2::dequantize(self, table, codes, scale, out);
    }
    #[inline(always)]
    fn largest_finite(self, values: &[f32]) -> f32 {
        avx2::largest_finite(self, values)
    }
    #[inline(always)]
    fn quantize(self, table: &Table, values: &[f32], scale: f32, codes: &mut [u8]) {
        avx2::quantize(self, table, values, scale, codes);
    }
}

/// The scalar path's values for the codes after the last whole register.
#[inline(always)]
fn dequantize_tail(table: &Table, codes: &[u8], scale: f32, out: &mut [f32]) {
    for (x, &code) in out.iter_mut().zip(codes) {
        *x = table.values[code as usize] * scale;
    }
}

/// The larger of `largest` and the finite magnitudes of `values` (the
/// elements after the last whole register).
#[inline(always)]
fn largest_finite_tail(values: &[f32], mut largest: f32) -> f32 {
    for &x in values {
        let magnitude = x.abs();
        if magnitude > largest && magnitude != f32::INFINITY {
            largest = magnitude;
        }
    }
    largest
}

/// The scalar path's codes for the values after the last whole register.
#[inline(always)]
fn quantize_tail(table: &Table, values: &[f32], scale: f32, codes: &mut [u8]) {
    for (code, &x) in codes.iter_mut().zip(values) {
        *code = quant_map::quantize_fast(table, quant_map::clamp_input(x / scale));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::QuantMap;

    /// Both sides of every threshold of both maps, scaled by a block
    /// scale, and the specials: the lanes give the scalar path's codes and
    /// values.
    fn quantizes_as_the_scalar_path(lanes: impl CodecLanes) {
        for map in [QuantMap::DynamicUnsigned, QuantMap::DynamicSigned] {
            let table = map.table();
            codes_as_the_scalar_path(table, |values, scale, codes| {
                lanes.quantize(table, values, scale, codes);
            });
            dequantizes_as_the_scalar_path(table, |codes, out| {
                lanes.dequantize(table, codes, 3.0, out);
            });
        }
    }

    /// Both sides of every threshold, scaled by a block scale, the
    /// specials, and every 997th `f32` of `[-1, 1]` scaled, in lengths that
    /// end with a whole round of 64, of 16 and a scalar tail: `quantize`
    /// (values, scale, codes) gives the scalar path's codes.
    fn codes_as_the_scalar_path(table: &Table, quantize: impl Fn(&[f32], f32, &mut [u8])) {
        let scale = 3.0f32;
        let mut values: Vec<f32> = table.upper[..255]
            .iter()
            .flat_map(|&t| [t.next_down(), t, t.next_up()])
            .flat_map(|t| [t, -t])
            .map(|t| t * scale)
            .collect();
        values.extend([
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            0.0,
            -0.0,
            scale,
            -scale,
        ]);
        values.extend(
            (0..=0x3F80_0000u32)
                .step_by(997)
                .flat_map(|bits| [f32::from_bits(bits), -f32::from_bits(bits)])
                .map(|x| x * scale),
        );
        for len in [values.len(), values.len() / 64 * 64 + 16 + 5, 64 + 5, 21] {
            let values = &values[values.len() - len..];
            let mut codes = vec![0u8; len];
            quantize(values, scale, &mut codes);
            for (i, (&x, &code)) in values.iter().zip(&codes).enumerate() {
                let scalar = quant_map::quantize_fast(table, quant_map::clamp_input(x / scale));
                assert_eq!(code, scalar, "element {i} of {len}: {x}");
            }
        }
    }

    /// Every code, in order and shuffled, in lengths that end with a whole
    /// round of 64, of 16 and a scalar tail: `dequantize` gives the scalar
    /// path's values (at scale 3).
    fn dequantizes_as_the_scalar_path(table: &Table, dequantize: impl Fn(&[u8], &mut [f32])) {
        let scale = 3.0f32;
        let shuffled = (0..=255u8).map(|c| c.wrapping_mul(167).wrapping_add(13));
        let all: Vec<u8> = (0..=255).chain(shuffled).collect();
        for len in [256, 256 + 16 + 3, 64 + 5, 63, 1, 0] {
            for codes in [&all[..len], &all[all.len() - len..]] {
                let mut back = vec![f32::NAN; len];
                dequantize(codes, &mut back);
                for (value, &code) in back.iter().zip(codes) {
                    let expected = table.values[code as usize] * scale;
                    assert_eq!(
                        value.to_bits(),
                        expected.to_bits(),
                        "code {code}, {len} codes"
                    );
                }
            }
        }
    }

    fn skips_nan_and_infinity(lanes: impl CodecLanes) {
        let mut values = vec![0.5f32; 37];
        values[3] = f32::NAN;
        values[20] = f32::NEG_INFINITY;
        values[36] = -2.0;
        values[7] = 1.5;
        assert_eq!(lanes.largest_finite(&values), 2.0);
        values[36] = 0.0;
        assert_eq!(lanes.largest_finite(&values), 1.5);
        values[7] = -0.0;
        values[5] = f32::INFINITY;
        values
            .iter_mut()
            .for_each(|x| *x = if x.is_finite() { 0.0 } else { *x });
        assert_eq!(lanes.largest_finite(&values), 0.0);
    }

    #[test]
    fn avx512_lanes_quantize_as_the_scalar_path() {
        match V4::try_new() {
            Some(v4) => {
                quantizes_as_the_scalar_path(v4);
                skips_nan_and_infinity(v4);
            }
            None => eprintln!("no AVX-512 on this CPU: nothing to compare"),
        }
    }

    /// Both AVX-512 ways of quantizing and dequantizing, whichever `V4` picks
    /// on this CPU.
    #[test]
    fn avx512_gathers_and_byte_permutes_give_the_scalar_path_codes_and_values() {
        let Some(v4) = V4::try_new() else {
            return eprintln!("no AVX-512 on this CPU: nothing to compare");
        };
        for map in [QuantMap::DynamicUnsigned, QuantMap::DynamicSigned] {
            let table = map.table();
            dequantizes_as_the_scalar_path(table, |codes, out| {
                avx512::dequantize(v4, table, codes, 3.0, out);
            });
            codes_as_the_scalar_path(table, |values, scale, codes| {
                avx512::quantize(v4, table, values, scale, codes);
            });
            if !has_vbmi() {
                eprintln!("no AVX-512 VBMI on this CPU: byte permutes not compared");
                continue;
            }
            dequantizes_as_the_scalar_path(table, |codes, out| {
                let rest = |codes: &[u8], out: &mut [f32]| dequantize_tail(table, codes, 3.0, out);
                // SAFETY: `has_vbmi` checked AVX-512BW and VBMI, and `v4`
                // proves AVX-512F.
                unsafe { avx512_vbmi::dequantize(table, codes, 3.0, out, rest) };
            });
            codes_as_the_scalar_path(table, |values, scale, codes| {
                let rest = |values: &[f32], codes: &mut [u8]| {
                    quantize_tail(table, values, scale, codes);
                };
                // SAFETY: as above.
                unsafe { avx512_vbmi::quantize(table, values, scale, codes, rest) };
            });
        }
    }

    #[test]
    fn avx2_lanes_quantize_as_the_scalar_path() {
        match V3::try_new() {
            Some(v3) => {
                quantizes_as_the_scalar_path(v3);
                skips_nan_and_infinity(v3);
            }
            None => eprintln!("no AVX2 on this CPU: nothing to compare"),
        }
    }
}
