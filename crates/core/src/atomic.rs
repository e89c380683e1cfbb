//! Atomic operations: writes that combine an operand with whatever value the key holds when the
//! mutation is applied, instead of with a value the transaction read.
//!
//! A transaction that adds 1 to a counter by reading it and writing it back conflicts with every
//! other transaction that does the same. An [`AtomicOp`] carried by
//! [`Mutation::Atomic`](crate::Mutation::Atomic) does not read: it adds a write conflict on its
//! key and no read conflict, and the storage servers apply it, in version order, to the value
//! the key holds just before it. So any number of concurrent adds commit, and the counter ends
//! at their sum. [`AtomicOp::apply`] is the one definition of what an operation does, used by
//! the storage servers and by a transaction reading its own writes.

use std::cmp::Ordering;

use bytes::Bytes;

use crate::types::{VALUE_BYTES_MAX, Value};
use crate::wire::WireError;

/// An operation that combines an operand with the value a key holds when it is applied, as
/// FoundationDB's atomic operations of the same names do.
///
/// # Semantics
///
/// Values and operands are **little-endian unsigned integers** of any length. The operand's
/// length `n` sets the result's length: the existing value is zero-extended or truncated to `n`
/// bytes first, and a missing value counts as `n` zero bytes.
///
/// - [`AtomicOp::Add`]: the sum, wrapping around at `n` bytes (so adding `u64::MAX` as 8 bytes
///   subtracts 1, and a two's complement `i64` operand subtracts).
/// - [`AtomicOp::Max`]: the larger of the two, compared as unsigned integers of `n` bytes.
/// - [`AtomicOp::Min`]: the smaller of the two; but a **missing** value gives the operand, as in
///   FoundationDB (an empty value that is present counts as zero).
///
/// # Limits
///
/// The operand must hold at least one byte and at most [`VALUE_BYTES_MAX`]; a transaction with
/// an empty or longer operand is refused when it is encoded, and when it is decoded, with
/// [`WireError::EmptyOperand`] or [`WireError::OperandTooLarge`]. The key is limited as any
/// other key.
///
/// # Example
///
/// ```
/// use strata_core::AtomicOp;
///
/// // 255 + 1, as one byte, wraps to 0; as two bytes it carries.
/// assert_eq!(AtomicOp::Add.apply(Some(&[0xff]), &[1]), &[0x00][..]);
/// assert_eq!(AtomicOp::Add.apply(Some(&[0xff]), &[1, 0]), &[0x00, 0x01][..]);
/// // A missing value is zero for an add.
/// assert_eq!(AtomicOp::Add.apply(None, &5u64.to_le_bytes()), &5u64.to_le_bytes()[..]);
/// // Compared as little-endian integers: 0x0100 (256) is larger than 0x00ff (255).
/// assert_eq!(AtomicOp::Max.apply(Some(&[0x00, 0x01]), &[0xff, 0x00]), &[0x00, 0x01][..]);
/// // The existing value is truncated to the operand's length before comparing.
/// assert_eq!(AtomicOp::Min.apply(Some(&[0x07, 0x09]), &[0x08]), &[0x07][..]);
/// // A min over a missing value gives the operand.
/// assert_eq!(AtomicOp::Min.apply(None, &[0x08]), &[0x08][..]);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AtomicOp {
    /// Adds the operand, wrapping around at the operand's length.
    Add,
    /// Keeps the larger of the value and the operand.
    Max,
    /// Keeps the smaller of the value and the operand; a missing value gives the operand.
    Min,
}

impl AtomicOp {
    /// Every operation, in the order of their codes on the wire.
    pub const ALL: [AtomicOp; 3] = [AtomicOp::Add, AtomicOp::Max, AtomicOp::Min];

    /// The value the key holds after this operation with `operand` is applied to `existing`
    /// (`None` when the key has no value). See the type's docs for the rules.
    ///
    /// A pure function of its arguments, so every storage server, every replay of the log and a
    /// transaction reading its own writes compute the same value. An empty operand gives an
    /// empty value (the wire format refuses empty operands, so none reaches a storage server).
    pub fn apply(self, existing: Option<&[u8]>, operand: &[u8]) -> Value {
        let Some(existing) = existing else {
            // 0 + x = max(0, x) = x, and FoundationDB's min over nothing is the operand.
            return Bytes::copy_from_slice(operand);
        };
        let mut out = vec![0u8; operand.len()];
        let kept = existing.len().min(operand.len());
        out[..kept].copy_from_slice(&existing[..kept]);
        match self {
            AtomicOp::Add => {
                let mut carry = false;
                for (byte, &add) in out.iter_mut().zip(operand) {
                    let (sum, over) = byte.overflowing_add(add);
                    let (sum, over_carry) = sum.overflowing_add(u8::from(carry));
                    *byte = sum;
                    carry = over || over_carry;
                }
            }
            AtomicOp::Max => {
                if compare_le(operand, &out) == Ordering::Greater {
                    out.copy_from_slice(operand);
                }
            }
            AtomicOp::Min => {
                if compare_le(operand, &out) == Ordering::Less {
                    out.copy_from_slice(operand);
                }
            }
        }
        Bytes::from(out)
    }

    /// The operation's code in the wire format (see [`crate::wire`]).
    pub fn code(self) -> u8 {
        match self {
            AtomicOp::Add => 0,
            AtomicOp::Max => 1,
            AtomicOp::Min => 2,
        }
    }

    /// The operation with wire code `code`, if there is one.
    pub fn from_code(code: u8) -> Option<AtomicOp> {
        AtomicOp::ALL.get(usize::from(code)).copied()
    }
}

/// Reads a value as a little-endian unsigned integer of 8 bytes, the way [`AtomicOp`] treats
/// it: a shorter value is zero-extended, a longer one truncated, a missing one is 0. The
/// counterpart of writing a counter with `n.to_le_bytes()` and adding to it atomically.
///
/// ```
/// assert_eq!(strata_core::atomic::le_u64(Some(&[1, 1])), 257);
/// assert_eq!(strata_core::atomic::le_u64(None), 0);
/// ```
pub fn le_u64(value: Option<&[u8]>) -> u64 {
    let mut bytes = [0u8; 8];
    if let Some(value) = value {
        let kept = value.len().min(8);
        bytes[..kept].copy_from_slice(&value[..kept]);
    }
    u64::from_le_bytes(bytes)
}

/// Compares two little-endian unsigned integers of the same length.
fn compare_le(a: &[u8], b: &[u8]) -> Ordering {
    a.iter().rev().cmp(b.iter().rev())
}

/// Checks the operand of mutation `index` against its limits (see [`AtomicOp`]).
pub(crate) fn check_operand(index: usize, len: usize) -> Result<(), WireError> {
    if len == 0 {
        return Err(WireError::EmptyOperand { index });
    }
    if len > VALUE_BYTES_MAX {
        return Err(WireError::OperandTooLarge {
            index,
            len,
            max: VALUE_BYTES_MAX,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn apply(op: AtomicOp, existing: Option<&[u8]>, operand: &[u8]) -> Vec<u8> {
        op.apply(existing, operand).to_vec()
    }

    #[test]
    fn add_carries_across_bytes_and_wraps_at_the_operands_length() {
        assert_eq!(apply(AtomicOp::Add, Some(&[1, 2]), &[3, 4]), [4, 6]);
        assert_eq!(apply(AtomicOp::Add, Some(&[0xff, 0x00]), &[1, 0]), [0, 1]);
        assert_eq!(apply(AtomicOp::Add, Some(&[0xff, 0xff]), &[1, 0]), [0, 0]);
        assert_eq!(
            apply(AtomicOp::Add, Some(&[0xff, 0xff, 0xff]), &[1, 0, 0]),
            [0, 0, 0]
        );
        // Subtracting by adding the two's complement.
        let minus_one = (-1i64).to_le_bytes();
        assert_eq!(
            apply(AtomicOp::Add, Some(&10u64.to_le_bytes()), &minus_one),
            9u64.to_le_bytes()
        );
    }

    #[test]
    fn the_operands_length_sets_the_results_length() {
        // A shorter existing value is zero-extended.
        assert_eq!(apply(AtomicOp::Add, Some(&[7]), &[1, 1, 1]), [8, 1, 1]);
        assert_eq!(apply(AtomicOp::Max, Some(&[7]), &[1, 0]), [7, 0]);
        // A longer one is truncated: its high bytes are gone, even when they made it larger.
        assert_eq!(apply(AtomicOp::Add, Some(&[1, 9, 9]), &[1]), [2]);
        assert_eq!(apply(AtomicOp::Max, Some(&[1, 9]), &[2]), [2]);
        assert_eq!(apply(AtomicOp::Min, Some(&[1, 9]), &[2]), [1]);
        // An empty value that is present counts as zero.
        assert_eq!(apply(AtomicOp::Add, Some(&[]), &[5, 0]), [5, 0]);
        assert_eq!(apply(AtomicOp::Max, Some(&[]), &[5, 0]), [5, 0]);
        assert_eq!(apply(AtomicOp::Min, Some(&[]), &[5, 0]), [0, 0]);
    }

    #[test]
    fn max_and_min_compare_little_endian_not_lexicographically() {
        // 0x01ff = 511 against 0x0200 = 512: byte by byte from the front, 0xff looks larger.
        let (small, large) = ([0xff, 0x01], [0x00, 0x02]);
        assert_eq!(apply(AtomicOp::Max, Some(&small), &large), large);
        assert_eq!(apply(AtomicOp::Max, Some(&large), &small), large);
        assert_eq!(apply(AtomicOp::Min, Some(&small), &large), small);
        assert_eq!(apply(AtomicOp::Min, Some(&large), &small), small);
        assert_eq!(apply(AtomicOp::Max, Some(&large), &large), large);
    }

    #[test]
    fn a_missing_value_gives_the_operand_for_every_operation() {
        for op in AtomicOp::ALL {
            assert_eq!(apply(op, None, &[3, 0, 0]), [3, 0, 0], "{op:?}");
        }
        // Unlike an existing zero, for min.
        assert_eq!(apply(AtomicOp::Min, Some(&[0]), &[3]), [0]);
        assert_eq!(apply(AtomicOp::Add, None, &[]), Vec::<u8>::new());
    }

    #[test]
    fn codes_round_trip_and_unknown_codes_are_none() {
        for op in AtomicOp::ALL {
            assert_eq!(AtomicOp::from_code(op.code()), Some(op));
        }
        assert_eq!(AtomicOp::from_code(3), None);
        assert_eq!(AtomicOp::from_code(255), None);
    }

    #[test]
    fn operand_limits() {
        assert_eq!(
            check_operand(4, 0),
            Err(WireError::EmptyOperand { index: 4 })
        );
        assert_eq!(check_operand(0, 1), Ok(()));
        assert_eq!(check_operand(0, VALUE_BYTES_MAX), Ok(()));
        assert_eq!(
            check_operand(2, VALUE_BYTES_MAX + 1),
            Err(WireError::OperandTooLarge {
                index: 2,
                len: VALUE_BYTES_MAX + 1,
                max: VALUE_BYTES_MAX
            })
        );
    }

    #[test]
    fn le_u64_reads_a_value_as_an_add_of_eight_bytes_would() {
        assert_eq!(le_u64(None), 0);
        assert_eq!(le_u64(Some(&[])), 0);
        assert_eq!(le_u64(Some(&[2, 1])), 258);
        assert_eq!(le_u64(Some(&[1, 0, 0, 0, 0, 0, 0, 0, 9])), 1);
        let counter = AtomicOp::Add.apply(Some(&[0xff; 3]), &2u64.to_le_bytes());
        assert_eq!(le_u64(Some(&counter)), 0x0100_0001);
    }

    /// A little-endian integer of `n` bytes, as a `u128`, after zero-extending or truncating.
    fn model_int(bytes: &[u8], n: usize) -> u128 {
        bytes
            .iter()
            .take(n)
            .rev()
            .fold(0u128, |acc, &b| (acc << 8) | u128::from(b))
    }

    fn model_bytes(x: u128, n: usize) -> Vec<u8> {
        x.to_le_bytes()[..n].to_vec()
    }

    /// The rules written as integer arithmetic on `u128`, for operands of 1 to 16 bytes.
    fn model(op: AtomicOp, existing: Option<&[u8]>, operand: &[u8]) -> Vec<u8> {
        let n = operand.len();
        let mask = if n == 16 {
            u128::MAX
        } else {
            (1u128 << (8 * n)) - 1
        };
        let b = model_int(operand, n);
        let a = existing.map(|e| model_int(e, n));
        let result = match (op, a) {
            (AtomicOp::Min, None) => b,
            (AtomicOp::Add, a) => a.unwrap_or(0).wrapping_add(b) & mask,
            (AtomicOp::Max, a) => a.unwrap_or(0).max(b),
            (AtomicOp::Min, Some(a)) => a.min(b),
        };
        model_bytes(result, n)
    }

    fn op() -> impl Strategy<Value = AtomicOp> {
        prop::sample::select(AtomicOp::ALL.to_vec())
    }

    /// Bytes biased to the edges, so carries and ties are frequent.
    fn bytes(len: std::ops::Range<usize>) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            prop_oneof![Just(0u8), Just(0xff), Just(1), any::<u8>()],
            len,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn apply_matches_integer_arithmetic(
            op in op(),
            existing in proptest::option::of(bytes(0..20)),
            operand in bytes(1..17),
        ) {
            prop_assert_eq!(
                apply(op, existing.as_deref(), &operand),
                model(op, existing.as_deref(), &operand)
            );
        }

        #[test]
        fn ops_applied_in_turn_match_the_model(
            start in proptest::option::of(bytes(0..10)),
            ops in proptest::collection::vec((op(), bytes(1..9)), 1..8),
        ) {
            let mut value = start.clone();
            let mut expected = start;
            for (op, operand) in &ops {
                value = Some(apply(*op, value.as_deref(), operand));
                expected = Some(model(*op, expected.as_deref(), operand));
                prop_assert_eq!(&value, &expected);
            }
        }
    }
}
