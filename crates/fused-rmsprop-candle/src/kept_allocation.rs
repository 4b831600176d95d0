//! Allocations a step keeps for the next one.
//!
//! A step's vectors hold borrows of that step's variables, states,
//! gradients and locks, so they cannot outlive it. With 100,000 variables
//! they hold about 9 MB, which glibc returns to the system when the step
//! frees them and which the next step then faults back in page by page
//! (about 2,100 page faults per step, `perf stat -e page-faults`; none at
//! 1,000 variables, whose vectors stay in the heap): a cost per variable
//! that grew with the number of variables. A [`KeptAllocation`] keeps such a
//! vector's allocation without its items: emptied and retyped to a stand-in
//! item `W` of the same size and alignment that borrows nothing, which the
//! standard library's in-place `collect` does without reallocating (a test
//! here checks that it does; one in `inplace` that every vector the step
//! keeps is laid out like its stand-in).

/// The allocation of an empty vector whose items are laid out like `W`.
#[derive(Debug, Default)]
pub(crate) struct KeptAllocation<W>(Vec<W>);

impl<W> KeptAllocation<W> {
    /// An empty vector of `T` with room for at least `n` items: in the kept
    /// allocation when `T` has `W`'s size and alignment, in a new one
    /// otherwise (or when it is too small).
    pub(crate) fn take<T>(&mut self, n: usize) -> Vec<T> {
        let mut v = recycle(std::mem::take(&mut self.0));
        v.reserve(n);
        v
    }

    /// Keeps `v`'s allocation for the next [`take`](Self::take), dropping
    /// its items.
    pub(crate) fn keep<T>(&mut self, v: Vec<T>) {
        self.0 = recycle(v);
    }
}

/// `v` emptied and retyped. The allocation stays when `T` and `U` have one
/// size and alignment: std collects a `vec::IntoIter` in place then (not a
/// documented guarantee, hence the tests); otherwise the result is a new
/// empty vector, which is as correct and only slower.
fn recycle<T, U>(mut v: Vec<T>) -> Vec<U> {
    v.clear();
    v.into_iter()
        .map(|_| unreachable!("the vector was emptied"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_allocation_is_kept_across_item_types_of_one_layout() {
        let value = 7u64;
        let mut spare = KeptAllocation::<[usize; 2]>::default();
        let mut borrowing: Vec<(&u64, usize)> = spare.take(1000);
        borrowing.push((&value, 1));
        let address = borrowing.as_ptr() as usize;
        spare.keep(borrowing);
        let again: Vec<Option<usize>> = spare.take(1000);
        assert_eq!(again.as_ptr() as usize, address);
        assert!(again.is_empty() && again.capacity() >= 1000);
    }

    #[test]
    fn a_different_layout_gets_a_new_allocation_of_the_room_asked() {
        let mut spare = KeptAllocation::<[usize; 2]>::default();
        spare.keep(Vec::<[usize; 2]>::with_capacity(10));
        let wider: Vec<[usize; 3]> = spare.take(50);
        assert!(wider.is_empty() && wider.capacity() >= 50);
    }
}
