//! A cursor over the fuzzer's bytes that never runs dry: past the end it
//! reads zeros, so every input, however short, decodes to a case.

/// The fuzzer's bytes, read front to back.
pub(crate) struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    pub(crate) fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    pub(crate) fn flag(&mut self) -> bool {
        self.byte() & 1 == 1
    }

    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        for b in &mut out {
            *b = self.byte();
        }
        out
    }

    /// Any `f32` bit pattern.
    pub(crate) fn f32(&mut self) -> f32 {
        f32::from_le_bytes(self.bytes())
    }

    /// Any `f64` bit pattern.
    pub(crate) fn f64(&mut self) -> f64 {
        f64::from_le_bytes(self.bytes())
    }

    /// A length in `0..=max`.
    pub(crate) fn len(&mut self, max: usize) -> usize {
        usize::from(u16::from_le_bytes(self.bytes())) % (max + 1)
    }

    /// What is left.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}
