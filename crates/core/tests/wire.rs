//! The transaction wire format: round trips, damaged input, and every limit.
//!
//! `raw` below is a second encoder written from the byte-layout table in the `wire` module's
//! docs, not from its code, so these tests also check that the table is true.

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use proptest::prelude::*;
use strata_core::wire::{Section, TransactionView, WireError};
use strata_core::{
    AtomicOp, KEY_BYTES_MAX, KeyRange, Mutation, RANGE_END_BYTES_MAX, TRANSACTION_BYTES_MAX,
    Transaction, VALUE_BYTES_MAX, Version,
};

mod raw {
    /// A complete encoding from section bodies, `(tag, body)`, laid out as documented.
    pub(crate) fn encode(sections: &[(u8, Vec<u8>)]) -> Vec<u8> {
        let mut out = vec![0u8; 16];
        for (tag, body) in sections {
            let start = out.len();
            out.push(*tag);
            out.extend_from_slice(&(body.len() as u32).to_le_bytes());
            out.extend_from_slice(&[0; 4]);
            out.extend_from_slice(body);
            let mut h = crc32fast::Hasher::new();
            h.update(&out[start..start + 5]);
            h.update(body);
            let crc = h.finalize();
            out[start + 5..start + 9].copy_from_slice(&crc.to_le_bytes());
        }
        let total = out.len() as u32;
        out[0..4].copy_from_slice(b"STXN");
        out[4..6].copy_from_slice(&1u16.to_le_bytes());
        out[6..8].copy_from_slice(&(sections.len() as u16).to_le_bytes());
        out[8..12].copy_from_slice(&total.to_le_bytes());
        let crc = crc32fast::hash(&out[0..12]);
        out[12..16].copy_from_slice(&crc.to_le_bytes());
        out
    }

    pub(crate) fn string(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(bytes);
    }

    /// Mutations body with one Set.
    pub(crate) fn one_set(key: &[u8], value: &[u8]) -> Vec<u8> {
        let mut b = 1u32.to_le_bytes().to_vec();
        b.push(0);
        string(&mut b, key);
        string(&mut b, value);
        b
    }

    /// A ranges body (count, then begin/end pairs), for the writes section.
    pub(crate) fn ranges(ranges: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut b = (ranges.len() as u32).to_le_bytes().to_vec();
        for (begin, end) in ranges {
            string(&mut b, begin);
            string(&mut b, end);
        }
        b
    }

    pub(crate) fn no_mutations() -> Vec<u8> {
        0u32.to_le_bytes().to_vec()
    }

    pub(crate) fn no_reads() -> Vec<u8> {
        vec![0, 0, 0, 0, 0]
    }

    pub(crate) fn no_writes() -> Vec<u8> {
        0u32.to_le_bytes().to_vec()
    }
}

fn key() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        8 => proptest::collection::vec(any::<u8>(), 0..24),
        1 => proptest::collection::vec(any::<u8>(), KEY_BYTES_MAX - 2..=KEY_BYTES_MAX),
    ]
    .prop_map(Bytes::from)
}

fn range() -> impl Strategy<Value = KeyRange> {
    (key(), key()).prop_map(|(a, b)| {
        let (begin, end) = if a <= b { (a, b) } else { (b, a) };
        KeyRange::new(begin.clone(), end).unwrap_or_else(|_| KeyRange::single(begin))
    })
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (key(), proptest::collection::vec(any::<u8>(), 0..200)).prop_map(|(key, v)| {
            Mutation::Set {
                key,
                value: Bytes::from(v),
            }
        }),
        key().prop_map(|key| Mutation::Clear { key }),
        range().prop_map(|range| Mutation::ClearRange { range }),
        (
            prop::sample::select(AtomicOp::ALL.to_vec()),
            key(),
            proptest::collection::vec(any::<u8>(), 1..20),
        )
            .prop_map(|(op, key, operand)| Mutation::Atomic {
                op,
                key,
                operand: Bytes::from(operand),
            }),
    ]
}

fn transaction() -> impl Strategy<Value = Transaction> {
    (
        proptest::option::of(any::<u64>()),
        proptest::collection::vec(range(), 0..8),
        proptest::collection::vec(range(), 0..8),
        proptest::collection::vec(mutation(), 0..12),
    )
        .prop_map(|(rv, reads, writes, mutations)| Transaction {
            read_conflicts: if rv.is_some() { reads } else { Vec::new() },
            read_version: rv.map(Version),
            write_conflicts: writes,
            mutations,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_transaction_round_trips(tx in transaction(), commit in any::<u64>()) {
        let bytes = tx.encode().unwrap();
        prop_assert_eq!(tx.encoded_len().unwrap(), bytes.len());
        prop_assert_eq!(&Transaction::decode(&bytes).unwrap(), &tx);
        prop_assert_eq!(&Transaction::decode_bytes(bytes.clone()).unwrap(), &tx);
        let view = TransactionView::parse(bytes).unwrap();
        prop_assert_eq!(view.conflicts().unwrap(), tx.conflicts());
        let stamped = TransactionView::parse(view.with_commit_version(Version(commit)).unwrap())
            .unwrap();
        prop_assert_eq!(stamped.commit_version().unwrap(), Some(Version(commit)));
        prop_assert_eq!(&stamped.to_transaction().unwrap(), &tx);
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Transaction::decode(&bytes);
    }

    #[test]
    fn random_bytes_behind_a_valid_header_never_panic(
        count in 0u16..6,
        body in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut bytes = raw::encode(&[]);
        bytes.extend_from_slice(&body);
        let total = bytes.len() as u32;
        bytes[6..8].copy_from_slice(&count.to_le_bytes());
        bytes[8..12].copy_from_slice(&total.to_le_bytes());
        let crc = crc32fast::hash(&bytes[0..12]);
        bytes[12..16].copy_from_slice(&crc.to_le_bytes());
        let _ = Transaction::decode(&bytes);
    }

    #[test]
    fn every_truncation_is_an_error(tx in transaction(), cut in any::<prop::sample::Index>()) {
        let bytes = tx.encode().unwrap();
        let len = cut.index(bytes.len());
        prop_assert!(Transaction::decode(&bytes[..len]).is_err());
    }

    #[test]
    fn every_single_byte_flip_is_an_error(
        tx in transaction(),
        at in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        // CRC-32 catches every error burst of up to 32 bits, and every byte is covered by the
        // header's CRC or its section's, so one damaged byte can never pass.
        let mut bytes = tx.encode().unwrap().to_vec();
        let i = at.index(bytes.len());
        bytes[i] ^= flip;
        prop_assert!(Transaction::decode(&bytes).is_err(), "flip at {} passed", i);
    }

    #[test]
    fn scattered_flips_fail_or_decode_canonically(
        tx in transaction(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 2..8),
    ) {
        let mut bytes = tx.encode().unwrap().to_vec();
        for (at, flip) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= flip;
        }
        // Whatever a CRC cannot see must still be a well-formed transaction, whose encoding is
        // exactly the bytes it was read from.
        if let Ok(decoded) = Transaction::decode(&bytes) {
            let again = decoded.encode().unwrap();
            prop_assert_eq!(again.as_ref(), &bytes[..]);
        }
    }
}

#[test]
fn raw_encoder_agrees_with_the_documented_layout() {
    let tx = Transaction {
        mutations: vec![Mutation::Set {
            key: "k".into(),
            value: "v".into(),
        }],
        write_conflicts: vec![KeyRange::single("k")],
        ..Transaction::default()
    };
    let expected = raw::encode(&[
        (1, raw::one_set(b"k", b"v")),
        (2, raw::no_reads()),
        (3, raw::ranges(&[(b"k", b"k\0")])),
    ]);
    assert_eq!(tx.encode().unwrap().as_ref(), &expected[..]);
}

#[test]
fn key_limit_is_enforced_at_encode_and_decode() {
    let at_limit = Bytes::from(vec![b'k'; KEY_BYTES_MAX]);
    let over = Bytes::from(vec![b'k'; KEY_BYTES_MAX + 1]);
    let set = |key: Bytes| Transaction {
        mutations: vec![Mutation::Set {
            key,
            value: "v".into(),
        }],
        ..Transaction::default()
    };
    assert!(set(at_limit).encode().is_ok());
    let expected = WireError::KeyTooLarge {
        section: Section::Mutations,
        index: 0,
        len: KEY_BYTES_MAX + 1,
        max: KEY_BYTES_MAX,
    };
    assert_eq!(set(over.clone()).encode(), Err(expected.clone()));
    assert_eq!(set(over.clone()).encoded_len(), Err(expected.clone()));
    let forged = raw::encode(&[
        (1, raw::one_set(&over, b"v")),
        (2, raw::no_reads()),
        (3, raw::no_writes()),
    ]);
    assert_eq!(Transaction::decode(&forged), Err(expected));
}

#[test]
fn range_end_may_be_one_byte_longer_than_a_key() {
    let longest = Bytes::from(vec![b'k'; KEY_BYTES_MAX]);
    let tx = Transaction {
        write_conflicts: vec![KeyRange::single(longest)],
        ..Transaction::default()
    };
    assert_eq!(Transaction::decode(&tx.encode().unwrap()).unwrap(), tx);

    let end_over = vec![b'k'; RANGE_END_BYTES_MAX + 1];
    let tx = Transaction {
        write_conflicts: vec![KeyRange::new("a", Bytes::from(end_over.clone())).unwrap()],
        ..Transaction::default()
    };
    let expected = WireError::KeyTooLarge {
        section: Section::Writes,
        index: 0,
        len: RANGE_END_BYTES_MAX + 1,
        max: RANGE_END_BYTES_MAX,
    };
    assert_eq!(tx.encode(), Err(expected.clone()));
    assert_eq!(tx.encoded_len(), Err(expected.clone()));
    let forged = raw::encode(&[
        (1, raw::no_mutations()),
        (2, raw::no_reads()),
        (3, raw::ranges(&[(b"a", &end_over)])),
    ]);
    assert_eq!(Transaction::decode(&forged), Err(expected));
}

#[test]
fn value_limit_is_enforced_at_encode_and_decode() {
    let set = |len: usize| Transaction {
        mutations: vec![Mutation::Set {
            key: "k".into(),
            value: Bytes::from(vec![0u8; len]),
        }],
        ..Transaction::default()
    };
    assert!(set(VALUE_BYTES_MAX).encode().is_ok());
    let expected = WireError::ValueTooLarge {
        index: 0,
        len: VALUE_BYTES_MAX + 1,
        max: VALUE_BYTES_MAX,
    };
    assert_eq!(set(VALUE_BYTES_MAX + 1).encode(), Err(expected.clone()));
    assert_eq!(
        set(VALUE_BYTES_MAX + 1).encoded_len(),
        Err(expected.clone())
    );
    let forged = raw::encode(&[
        (1, raw::one_set(b"k", &vec![0u8; VALUE_BYTES_MAX + 1])),
        (2, raw::no_reads()),
        (3, raw::no_writes()),
    ]);
    assert_eq!(Transaction::decode(&forged), Err(expected));
}

#[test]
fn transaction_limit_is_enforced_at_encode_and_decode() {
    // 101 values of the largest size: every value is legal, their sum is not.
    let big = Bytes::from(vec![0u8; VALUE_BYTES_MAX]);
    let tx = Transaction {
        mutations: (0..101)
            .map(|i: u32| Mutation::Set {
                key: Bytes::from(i.to_be_bytes().to_vec()),
                value: big.clone(),
            })
            .collect(),
        ..Transaction::default()
    };
    assert!(matches!(
        tx.encode(),
        Err(WireError::TransactionTooLarge {
            max: TRANSACTION_BYTES_MAX,
            ..
        })
    ));
    assert_eq!(tx.encoded_len().err(), tx.encode().err());
    let oversized = vec![0u8; TRANSACTION_BYTES_MAX + 1];
    assert_eq!(
        Transaction::decode(&oversized),
        Err(WireError::TransactionTooLarge {
            len: TRANSACTION_BYTES_MAX + 1,
            max: TRANSACTION_BYTES_MAX
        })
    );
}

#[test]
fn reads_without_read_version_are_refused_at_decode() {
    let mut reads = vec![0u8];
    reads.extend_from_slice(&raw::ranges(&[(b"a", b"b")]));
    let forged = raw::encode(&[(1, raw::no_mutations()), (2, reads), (3, raw::no_writes())]);
    assert_eq!(
        Transaction::decode(&forged),
        Err(WireError::ReadsWithoutReadVersion)
    );
}

#[test]
fn unknown_mutation_kind_and_trailing_bytes_are_named() {
    let mut body = 1u32.to_le_bytes().to_vec();
    body.push(9);
    raw::string(&mut body, b"k");
    let forged = raw::encode(&[(1, body), (2, raw::no_reads()), (3, raw::no_writes())]);
    assert_eq!(
        Transaction::decode(&forged),
        Err(WireError::UnknownMutationKind { index: 0, kind: 9 })
    );

    let mut writes = raw::no_writes();
    writes.push(0);
    let forged = raw::encode(&[(1, raw::no_mutations()), (2, raw::no_reads()), (3, writes)]);
    assert_eq!(
        Transaction::decode(&forged),
        Err(WireError::SectionTrailingBytes {
            section: Section::Writes,
            extra: 1
        })
    );
}

/// An encoding made by the build before atomic operations existed (a Set, a Clear and a
/// ClearRange, read and write conflicts, a read version), kept as bytes: data written then
/// (in logs, say) must decode the same now.
const BEFORE_ATOMIC_OPS: &str = "5354584e01000300720000003be4cccf0120000000ca8e16290300000000\
    01000000620100000031010100000063020100000064010000006502180000004b0bad480107000000000000\
    00010000000100000061020000006100030f00000043b1bc9d010000000100000062020000006200";

fn unhex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect()
}

#[test]
fn an_encoding_from_before_atomic_operations_still_decodes_the_same() {
    let old = unhex(BEFORE_ATOMIC_OPS);
    let expected = Transaction {
        read_version: Some(Version(7)),
        read_conflicts: vec![KeyRange::single("a")],
        write_conflicts: vec![KeyRange::single("b")],
        mutations: vec![
            Mutation::Set {
                key: "b".into(),
                value: "1".into(),
            },
            Mutation::Clear { key: "c".into() },
            Mutation::ClearRange {
                range: KeyRange::new("d", "e").unwrap(),
            },
        ],
    };
    assert_eq!(Transaction::decode(&old).unwrap(), expected);
    // And the same transaction is still written with the same bytes.
    assert_eq!(expected.encode().unwrap().as_ref(), &old[..]);
}

/// A mutations body with one atomic operation of code `code`, laid out as documented.
fn one_atomic(code: u8, key: &[u8], operand: &[u8]) -> Vec<u8> {
    let mut b = 1u32.to_le_bytes().to_vec();
    b.extend_from_slice(&[3, code]);
    raw::string(&mut b, key);
    raw::string(&mut b, operand);
    b
}

fn forged_atomic(code: u8, operand: &[u8]) -> Vec<u8> {
    raw::encode(&[
        (1, one_atomic(code, b"k", operand)),
        (2, raw::no_reads()),
        (3, raw::no_writes()),
    ])
}

#[test]
fn atomic_operations_are_laid_out_as_documented() {
    for op in AtomicOp::ALL {
        let tx = Transaction {
            mutations: vec![Mutation::Atomic {
                op,
                key: "k".into(),
                operand: Bytes::from_static(&[1, 0]),
            }],
            ..Transaction::default()
        };
        let expected = forged_atomic(op.code(), &[1, 0]);
        assert_eq!(tx.encode().unwrap().as_ref(), &expected[..], "{op:?}");
        assert_eq!(Transaction::decode(&expected).unwrap(), tx);
    }
    assert_eq!(
        [AtomicOp::Add, AtomicOp::Max, AtomicOp::Min].map(AtomicOp::code),
        [0, 1, 2]
    );
}

#[test]
fn atomic_operand_limits_are_enforced_at_encode_and_decode() {
    let atomic = |len: usize| Transaction {
        mutations: vec![
            Mutation::Clear { key: "a".into() },
            Mutation::Atomic {
                op: AtomicOp::Max,
                key: "k".into(),
                operand: Bytes::from(vec![0xffu8; len]),
            },
        ],
        ..Transaction::default()
    };
    assert!(atomic(1).encode().is_ok());
    assert!(atomic(VALUE_BYTES_MAX).encode().is_ok());
    assert_eq!(
        atomic(0).encode(),
        Err(WireError::EmptyOperand { index: 1 })
    );
    let over = WireError::OperandTooLarge {
        index: 1,
        len: VALUE_BYTES_MAX + 1,
        max: VALUE_BYTES_MAX,
    };
    assert_eq!(atomic(VALUE_BYTES_MAX + 1).encode(), Err(over));

    assert_eq!(
        Transaction::decode(&forged_atomic(0, &[])),
        Err(WireError::EmptyOperand { index: 0 })
    );
    assert_eq!(
        Transaction::decode(&forged_atomic(2, &vec![0u8; VALUE_BYTES_MAX + 1])),
        Err(WireError::OperandTooLarge {
            index: 0,
            len: VALUE_BYTES_MAX + 1,
            max: VALUE_BYTES_MAX
        })
    );
    // The key of an atomic operation is limited like any other.
    let long_key = Transaction {
        mutations: vec![Mutation::Atomic {
            op: AtomicOp::Add,
            key: Bytes::from(vec![b'k'; KEY_BYTES_MAX + 1]),
            operand: Bytes::from_static(&[1]),
        }],
        ..Transaction::default()
    };
    assert!(matches!(
        long_key.encode(),
        Err(WireError::KeyTooLarge {
            section: Section::Mutations,
            index: 0,
            ..
        })
    ));
}

#[test]
fn an_unknown_atomic_operation_is_named_not_guessed() {
    assert_eq!(
        Transaction::decode(&forged_atomic(3, &[1])),
        Err(WireError::UnknownAtomicOp { index: 0, code: 3 })
    );
    assert_eq!(
        Transaction::decode(&forged_atomic(0xff, &[1])),
        Err(WireError::UnknownAtomicOp {
            index: 0,
            code: 0xff
        })
    );
}
