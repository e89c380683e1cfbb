//! Admission along a version chain: whether a request naming `previous -> version` may enter a
//! stage that holds everything up to `last`.
//!
//! The logs and the resolvers both take requests strictly along the `previous_version` chain
//! the sequencer hands out, and both decide admission by the same rule, which lives here once:
//! [`admit`]. It is a pure function; each caller keeps its own way of waiting for an early
//! request's predecessor (the logs wake waiters keyed by the version they wait for, a resolver
//! watches its last version) and wraps a refusal into an [`Error`](crate::Error) of its own
//! [`Stage`](crate::Stage) through `ErrorKind::from`.
//!
//! # Decision table
//!
//! The rows are checked in this order; the first that matches decides.
//!
//! | row           | condition             | outcome                                     | error kind |
//! |---------------|-----------------------|---------------------------------------------|------------|
//! | not following | `version <= previous` | [`ChainRefusal::NotFollowing`]: malformed   | `InvalidRequest("version V does not follow previous version P")` |
//! | duplicate     | `version <= last`     | [`ChainRefusal::Duplicate`]: already held   | `Duplicate { version, last }` |
//! | fork          | `previous < last`     | [`ChainRefusal::Fork`]: names an older predecessor | `OutOfOrder { previous, last }` |
//! | next          | `previous == last`    | [`Admission::Next`]: take it now            | |
//! | early         | `previous > last`     | [`Admission::Early`]: its predecessor is not here yet; wait (bounded) and ask again | |
//!
//! An early request whose wait runs out is `OutOfOrder` too, but that is the caller's wait,
//! not this decision.
//!
//! ```
//! use strata_core::Version;
//! use strata_core::chain::{Admission, ChainRefusal, admit};
//!
//! let last = Version(20);
//! assert_eq!(admit(Version(20), Version(30), last), Ok(Admission::Next));
//! assert_eq!(admit(Version(30), Version(40), last), Ok(Admission::Early));
//! assert_eq!(
//!     admit(Version(10), Version(20), last),
//!     Err(ChainRefusal::Duplicate { version: Version(20), last })
//! );
//! ```

use crate::error::ErrorKind;
use crate::types::Version;

/// A request [`admit`] lets in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Its predecessor is the last version held: it is next.
    Next,
    /// Its predecessor is newer than the last version held: it arrived early and waits for it.
    Early,
}

/// Why [`admit`] refuses a request. `ErrorKind::from` gives the error kind stages answer with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainRefusal {
    /// The version does not come after the previous version it names: a malformed request.
    NotFollowing {
        /// The previous version the request named.
        previous: Version,
        /// The version of the request.
        version: Version,
    },
    /// The version is already held.
    Duplicate {
        /// The version of the request.
        version: Version,
        /// The last version held.
        last: Version,
    },
    /// The predecessor named is older than the last version held: the chain forked.
    Fork {
        /// The previous version the request named.
        previous: Version,
        /// The last version held.
        last: Version,
    },
}

impl From<ChainRefusal> for ErrorKind {
    fn from(refusal: ChainRefusal) -> ErrorKind {
        match refusal {
            ChainRefusal::NotFollowing { previous, version } => ErrorKind::InvalidRequest(format!(
                "version {version} does not follow previous version {previous}"
            )),
            ChainRefusal::Duplicate { version, last } => ErrorKind::Duplicate { version, last },
            ChainRefusal::Fork { previous, last } => ErrorKind::OutOfOrder { previous, last },
        }
    }
}

/// Decides whether the request `previous -> version` may enter a stage holding everything up
/// to `last`; see the decision table in the [module docs](self).
///
/// The first row needs no `last`: a caller that refuses malformed requests before it takes a
/// lock or starts to wait may check it first with [`follows`], which is that row alone.
pub fn admit(
    previous: Version,
    version: Version,
    last: Version,
) -> Result<Admission, ChainRefusal> {
    follows(previous, version)?;
    if version <= last {
        return Err(ChainRefusal::Duplicate { version, last });
    }
    if previous < last {
        return Err(ChainRefusal::Fork { previous, last });
    }
    if previous == last {
        Ok(Admission::Next)
    } else {
        Ok(Admission::Early)
    }
}

/// The first row of [`admit`]'s table: `version` must come after `previous`.
pub fn follows(previous: Version, version: Version) -> Result<(), ChainRefusal> {
    if version <= previous {
        return Err(ChainRefusal::NotFollowing { previous, version });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    const fn v(n: u64) -> Version {
        Version(n)
    }

    #[test]
    fn not_following_is_a_malformed_request() {
        for (previous, version) in [(20, 20), (20, 10)] {
            let refusal = admit(v(previous), v(version), v(5)).unwrap_err();
            assert_eq!(
                refusal,
                ChainRefusal::NotFollowing {
                    previous: v(previous),
                    version: v(version)
                }
            );
            assert_eq!(follows(v(previous), v(version)), Err(refusal));
        }
        // Checked before anything that depends on `last`: even a version already held.
        assert!(matches!(
            admit(v(20), v(10), v(30)),
            Err(ChainRefusal::NotFollowing { .. })
        ));
        let ErrorKind::InvalidRequest(why) = ErrorKind::from(ChainRefusal::NotFollowing {
            previous: v(20),
            version: v(10),
        }) else {
            panic!("not an invalid request");
        };
        assert_eq!(why, "version v10 does not follow previous version v20");
    }

    #[test]
    fn a_version_already_held_is_a_duplicate() {
        // The very request that was last taken, and an older one.
        for (previous, version) in [(10, 20), (5, 15)] {
            assert_eq!(
                admit(v(previous), v(version), v(20)),
                Err(ChainRefusal::Duplicate {
                    version: v(version),
                    last: v(20)
                })
            );
        }
        assert!(matches!(
            ErrorKind::from(ChainRefusal::Duplicate {
                version: v(20),
                last: v(20)
            }),
            ErrorKind::Duplicate {
                version: Version(20),
                last: Version(20)
            }
        ));
    }

    #[test]
    fn an_older_predecessor_past_the_last_version_is_a_fork() {
        assert_eq!(
            admit(v(15), v(25), v(20)),
            Err(ChainRefusal::Fork {
                previous: v(15),
                last: v(20)
            })
        );
        assert!(matches!(
            ErrorKind::from(ChainRefusal::Fork {
                previous: v(15),
                last: v(20)
            }),
            ErrorKind::OutOfOrder {
                previous: Version(15),
                last: Version(20)
            }
        ));
    }

    #[test]
    fn the_last_version_as_predecessor_is_next() {
        assert_eq!(admit(v(20), v(21), v(20)), Ok(Admission::Next));
        assert_eq!(admit(v(0), v(u64::MAX), v(0)), Ok(Admission::Next));
    }

    #[test]
    fn a_newer_predecessor_is_early() {
        assert_eq!(admit(v(30), v(40), v(20)), Ok(Admission::Early));
        assert_eq!(admit(v(21), v(22), v(20)), Ok(Admission::Early));
    }

    /// The rule written out over the set of versions held (`0..=last`) instead of by
    /// comparisons in order.
    fn model(previous: u64, version: u64, last: u64) -> Result<Admission, ChainRefusal> {
        let held: BTreeSet<u64> = (0..=last).collect();
        if !(previous + 1..=u64::MAX).contains(&version) {
            Err(ChainRefusal::NotFollowing {
                previous: v(previous),
                version: v(version),
            })
        } else if held.contains(&version) {
            Err(ChainRefusal::Duplicate {
                version: v(version),
                last: v(last),
            })
        } else if held.contains(&previous) && held.last() != Some(&previous) {
            Err(ChainRefusal::Fork {
                previous: v(previous),
                last: v(last),
            })
        } else if held.last() == Some(&previous) {
            Ok(Admission::Next)
        } else {
            Ok(Admission::Early)
        }
    }

    proptest! {
        #[test]
        fn admit_matches_the_model(previous in 0u64..40, version in 0u64..40, last in 0u64..40) {
            prop_assert_eq!(
                admit(v(previous), v(version), v(last)),
                model(previous, version, last)
            );
        }

        /// A chain delivered in any order, each link perhaps more than once, is taken whole
        /// and in order when early requests wait and are asked again after each admission;
        /// every copy after the first is a duplicate, and nothing else is refused.
        #[test]
        fn any_delivery_of_a_chain_is_taken_in_order(
            start in 0u64..1_000,
            steps in prop::collection::vec(1u64..10, 1..20),
            copies in prop::collection::vec(1usize..4, 20),
            order in prop::collection::vec(any::<u32>(), 60),
        ) {
            let mut chain = vec![start];
            for step in &steps {
                chain.push(chain[chain.len() - 1] + step);
            }
            let links: Vec<(u64, u64)> = chain.windows(2).map(|w| (w[0], w[1])).collect();
            let mut deliveries: Vec<(u64, u64)> = links
                .iter()
                .zip(&copies)
                .flat_map(|(&link, &n)| std::iter::repeat_n(link, n))
                .collect();
            let mut keys = order.clone();
            keys.truncate(deliveries.len());
            let mut keyed: Vec<(u32, (u64, u64))> = keys.into_iter().zip(deliveries.drain(..)).collect();
            keyed.sort_by_key(|&(k, _)| k);

            let mut last = v(start);
            let mut taken = vec![start];
            let mut waiting: Vec<(u64, u64)> = Vec::new();
            let mut duplicates = 0usize;
            for (_, link) in keyed.iter().copied() {
                waiting.push(link);
                // Ask every waiter again until none is next.
                while let Some(i) = waiting.iter().position(|&(p, ver)| admit(v(p), v(ver), last) != Ok(Admission::Early)) {
                    let (p, ver) = waiting.swap_remove(i);
                    match admit(v(p), v(ver), last) {
                        Ok(Admission::Next) => {
                            last = v(ver);
                            taken.push(ver);
                        }
                        Err(ChainRefusal::Duplicate { .. }) => duplicates += 1,
                        other => prop_assert!(false, "{p} -> {ver} at {last}: {other:?}"),
                    }
                }
            }
            prop_assert!(waiting.is_empty(), "left waiting: {waiting:?}");
            prop_assert_eq!(&taken, &chain);
            prop_assert_eq!(duplicates, keyed.len() - links.len());
        }
    }
}
