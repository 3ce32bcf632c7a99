//! How many consumer workers a stream runs: between the spec's autoscale bounds, at most one
//! per input partition, scaled on consumer lag through an [`Autoscaler`].

use std::sync::Arc;

use serving_core::{AutoscaleBounds, Autoscaler, DynAutoscaler, Result};

/// The spec's replica bounds with `max_replicas` capped by the input topics' `partitions`
/// (more replicas than partitions would sit idle: a partition is consumed by one member of
/// the group). A larger maximum is logged and capped, never an error; `min_replicas` is
/// capped with it.
pub fn replica_bounds(endpoint: &str, spec: AutoscaleBounds, partitions: usize) -> AutoscaleBounds {
    let cap = u32::try_from(partitions).unwrap_or(u32::MAX).max(1);
    if spec.max_replicas <= cap {
        return spec;
    }
    tracing::warn!(
        endpoint,
        max_replicas = spec.max_replicas,
        partitions,
        "max_replicas is larger than the input topics' partition count; capped"
    );
    AutoscaleBounds {
        min_replicas: spec.min_replicas.min(cap),
        max_replicas: cap,
    }
}

/// The workers a backlog of `lag` messages calls for: one per `per_worker` messages behind
/// (at least one), within `bounds`.
pub fn desired_workers(lag: i64, per_worker: usize, bounds: AutoscaleBounds) -> u32 {
    let per_worker = per_worker.max(1) as u64;
    let lag = u64::try_from(lag).unwrap_or(0);
    let wanted = lag.div_ceil(per_worker).max(1);
    bounds.clamp(u32::try_from(wanted).unwrap_or(u32::MAX))
}

/// Scales a stream's workers on its consumer lag through an [`Autoscaler`].
#[derive(Debug, Clone)]
pub(crate) struct WorkerScaler {
    pub(crate) autoscaler: Arc<DynAutoscaler>,
    pub(crate) bounds: AutoscaleBounds,
    pub(crate) per_worker: usize,
}

impl WorkerScaler {
    /// Asks the autoscaler for the workers `lag` calls for; returns the count it applied.
    pub(crate) async fn scale(&self, endpoint: &str, lag: i64) -> Result<u32> {
        let desired = desired_workers(lag, self.per_worker, self.bounds);
        self.autoscaler.scale(endpoint, self.bounds, desired).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serving_core::InMemoryAutoscaler;

    #[test]
    fn max_replicas_is_capped_by_the_partitions_never_refused() {
        let spec = AutoscaleBounds::new(2, 10).unwrap();
        assert_eq!(
            replica_bounds("s", spec, 3),
            AutoscaleBounds::new(2, 3).unwrap()
        );
        assert_eq!(replica_bounds("s", spec, 12), spec);
        let high_min = AutoscaleBounds::new(5, 8).unwrap();
        assert_eq!(
            replica_bounds("s", high_min, 4),
            AutoscaleBounds::new(4, 4).unwrap()
        );
        assert_eq!(replica_bounds("s", spec, 0).max_replicas, 1);
    }

    #[tokio::test]
    async fn workers_follow_the_lag_within_the_bounds() {
        let bounds = AutoscaleBounds::new(1, 4).unwrap();
        assert_eq!(desired_workers(0, 1000, bounds), 1);
        assert_eq!(desired_workers(1500, 1000, bounds), 2);
        assert_eq!(desired_workers(1_000_000, 1000, bounds), 4);
        assert_eq!(desired_workers(-3, 1000, bounds), 1);
        let scaler = WorkerScaler {
            autoscaler: Arc::new(InMemoryAutoscaler::new()),
            bounds,
            per_worker: 100,
        };
        assert_eq!(scaler.scale("s", 250).await.unwrap(), 3);
        assert_eq!(scaler.autoscaler.replicas("s").await.unwrap(), 3);
        assert_eq!(scaler.scale("s", 10).await.unwrap(), 1);
    }
}
