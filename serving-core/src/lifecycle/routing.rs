//! The routing table: which loaded version answers a request. Requests read it through an
//! `ArcSwap` snapshot, so an update never blocks them and in-flight requests finish on the
//! version they started with.

use std::fmt;
use std::sync::Arc;

use crate::model::predictor::DynPredictor;

/// Routing points per 100 %: a split of `p` percent sends points below `p * 100` to the
/// candidate.
pub(crate) const POINTS: u32 = 10_000;

/// One loaded version: its id, its model's name and its predictor (preprocess included).
pub(crate) struct Served {
    pub(crate) id: Arc<str>,
    pub(crate) model: Arc<str>,
    pub(crate) predictor: Arc<DynPredictor>,
}

impl fmt::Debug for Served {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Served").field("id", &self.id).finish()
    }
}

/// A version and the share of traffic it gets, in percent.
#[derive(Debug, Clone)]
pub(crate) struct Share {
    pub(crate) served: Arc<Served>,
    pub(crate) percent: u8,
}

/// Who answers: the stable version, a candidate taking a share, and a shadow mirroring one.
#[derive(Debug, Clone)]
pub(crate) struct RoutingTable {
    pub(crate) stable: Arc<Served>,
    pub(crate) candidate: Option<Share>,
    pub(crate) shadow: Option<Share>,
}

/// Where one request goes.
#[derive(Debug)]
pub(crate) struct Routed {
    /// The version that answers.
    pub(crate) serve: Arc<Served>,
    /// A version that also gets the request, whose answer is recorded but not returned.
    pub(crate) mirror: Option<Arc<Served>>,
}

impl RoutingTable {
    /// Routes one request. A pinned `version` bypasses the split and is never mirrored;
    /// `None` when it is not one of the routable versions. A `key` makes the split sticky:
    /// the same key lands on the same version for a given share, and raising the share only
    /// moves keys from the stable version to the candidate, never back.
    pub(crate) fn route(&self, key: Option<&str>, version: Option<&str>) -> Option<Routed> {
        if let Some(version) = version {
            return self.find(version).map(|serve| Routed {
                serve,
                mirror: None,
            });
        }
        let serve = match &self.candidate {
            Some(candidate) => {
                let point = key.map_or_else(|| fastrand::u32(..POINTS), routing_point);
                if point < u32::from(candidate.percent) * 100 {
                    Arc::clone(&candidate.served)
                } else {
                    Arc::clone(&self.stable)
                }
            }
            None => Arc::clone(&self.stable),
        };
        let mirror = self
            .shadow
            .as_ref()
            .filter(|shadow| fastrand::u32(..100) < u32::from(shadow.percent))
            .filter(|shadow| shadow.served.id != serve.id)
            .map(|shadow| Arc::clone(&shadow.served));
        Some(Routed { serve, mirror })
    }

    /// The routable version with this id.
    pub(crate) fn find(&self, version: &str) -> Option<Arc<Served>> {
        std::iter::once(&self.stable)
            .chain(self.candidate.as_ref().map(|c| &c.served))
            .chain(self.shadow.as_ref().map(|s| &s.served))
            .find(|served| &*served.id == version)
            .cloned()
    }
}

/// Where a routing key falls in `0..POINTS`: FNV-1a, fixed so that a key keeps its version
/// across restarts and replicas (a per-process random hasher would not).
pub(crate) fn routing_point(key: &str) -> u32 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = key.bytes().fold(OFFSET, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    });
    // Fold the high bits in: FNV's low bits alone are poorly mixed for short keys.
    ((hash ^ (hash >> 32)) % u64::from(POINTS)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{PredictorExt, Result, predictor_fn};

    fn served(id: &str) -> Arc<Served> {
        Arc::new(Served {
            id: Arc::from(id),
            model: Arc::from("m"),
            predictor: predictor_fn(|| -> Result<()> { Ok(()) }).into_dyn(),
        })
    }

    fn table(percent: u8) -> RoutingTable {
        RoutingTable {
            stable: served("1"),
            candidate: Some(Share {
                served: served("2"),
                percent,
            }),
            shadow: None,
        }
    }

    #[test]
    fn sticky_keys_keep_their_version_and_only_move_forward() {
        let low = table(30);
        let high = table(60);
        let mut on_candidate = 0;
        for user in 0..2_000 {
            let key = format!("user-{user}");
            let first = low.route(Some(&key), None).unwrap().serve.id.clone();
            for _ in 0..3 {
                assert_eq!(low.route(Some(&key), None).unwrap().serve.id, first);
            }
            let raised = high.route(Some(&key), None).unwrap().serve.id.clone();
            if &*first == "2" {
                on_candidate += 1;
                assert_eq!(
                    &*raised, "2",
                    "raising the share keeps {key} on the candidate"
                );
            }
        }
        // 2000 keys at 30 %: mean 600, sd ~20.5; 5 sd either side.
        assert!((498..=702).contains(&on_candidate), "{on_candidate}");
    }

    #[test]
    fn random_split_matches_the_share() {
        let table = table(20);
        let n = 20_000;
        let hits = (0..n)
            .filter(|_| &*table.route(None, None).unwrap().serve.id == "2")
            .count();
        // mean 4000, sd ~56.6
        assert!((3_717..=4_283).contains(&hits), "{hits}");
    }

    #[test]
    fn pinned_versions_bypass_the_split_and_unknown_ones_are_none() {
        let table = table(0);
        assert_eq!(&*table.route(None, Some("2")).unwrap().serve.id, "2");
        assert!(table.route(None, Some("9")).is_none());
        assert!((0..100).all(|_| &*table.route(None, None).unwrap().serve.id == "1"));
    }

    #[test]
    fn shadow_mirrors_its_share_but_never_itself() {
        let mut table = table(0);
        table.shadow = Some(Share {
            served: served("3"),
            percent: 100,
        });
        let routed = table.route(None, None).unwrap();
        assert_eq!(routed.mirror.unwrap().id.as_ref(), "3");
        assert!(table.route(None, Some("3")).unwrap().mirror.is_none());
        table.shadow.as_mut().unwrap().percent = 0;
        assert!((0..100).all(|_| table.route(None, None).unwrap().mirror.is_none()));
    }
}
