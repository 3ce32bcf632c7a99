//! A deployment's state changes: versions added, promoted, dropped and loaded, the routing
//! table rebuilt, and the automated canary's timer. Children of `lifecycle` see its private
//! state, so the types stay declared beside [`Lifecycle`](super::Lifecycle).

use super::*;

impl Deployment {
    pub(super) fn conflict(&self, reason: String) -> Error {
        Error::Conflict {
            endpoint: self.endpoint.to_string(),
            reason,
        }
    }

    /// Adds `update` to the history as a loaded version in `initial` state; returns its id.
    pub(super) fn add_version(
        &self,
        state: &mut State,
        update: ModelUpdate,
        initial: VersionState,
    ) -> Result<String> {
        let id = match update.version {
            Some(id) if state.entry(&id).is_some() => {
                return Err(self.conflict(format!("version {id} already exists")));
            }
            Some(id) if id.is_empty() => {
                return Err(Error::invalid_request("a version id must not be empty"));
            }
            Some(id) => id,
            None => versions::next_version(state.versions.iter().map(|e| e.record.id.as_str())),
        };
        let mut spec = state
            .entry(state.stable())
            .expect("the stable version is in the history")
            .record
            .spec
            .clone();
        spec.model = ModelRef::new(update.model.unwrap_or(spec.model.name), id.clone());
        spec.preprocess = update.preprocess;
        if update.signature.is_some() {
            spec.signature = update.signature;
        }
        spec.autoscale = state.autoscale;
        spec.canary = state.policy.clone();
        let model = Arc::from(spec.model.name.as_str());
        let predictor = crate::model::batching::from_spec(update.predictor, &spec, &self.metrics)?;
        state.versions.push(Entry {
            record: ModelVersion {
                id: id.clone(),
                created_at: SystemTime::now(),
                description: update.description,
                state: initial,
                loaded: true,
                spec,
            },
            served: Some(Arc::new(Served {
                id: Arc::from(id.as_str()),
                model,
                predictor,
            })),
        });
        Ok(id)
    }

    pub(super) fn promote_locked(
        &self,
        state: &mut State,
        automatic: bool,
        detail: String,
    ) -> Result<String> {
        let Some((candidate, _)) = state.candidate.take() else {
            return Err(self.conflict("there is no candidate to promote".into()));
        };
        let previous = state.stable().to_owned();
        state.set_state(&previous, VersionState::Retired);
        state.make_stable(&candidate);
        state.watch = None;
        state.event(
            LifecycleAction::Promoted,
            &candidate,
            Some(100),
            automatic,
            detail,
        );
        tracing::info!(endpoint = %self.endpoint, model_version = %candidate, previous = %previous, automatic, "candidate promoted");
        Ok(candidate)
    }

    /// Drops the candidate; returns the stable version's id.
    pub(super) fn drop_candidate(
        &self,
        state: &mut State,
        automatic: bool,
        detail: String,
    ) -> Result<String> {
        let Some((candidate, _)) = state.candidate.take() else {
            return Err(self.conflict("there is no candidate to roll back".into()));
        };
        state.set_state(&candidate, VersionState::RolledBack);
        state.watch = None;
        let stable = state.stable().to_owned();
        state.event(
            LifecycleAction::RolledBack,
            &candidate,
            Some(0),
            automatic,
            detail,
        );
        tracing::warn!(endpoint = %self.endpoint, model_version = %candidate, stable = %stable, automatic, "candidate rolled back");
        Ok(stable)
    }

    /// Makes sure `version`'s predictor is in memory, rebuilding it from the registry.
    pub(super) fn load(&self, state: &mut State, version: &str) -> Result<()> {
        let entry = state
            .versions
            .iter_mut()
            .find(|e| e.record.id == version)
            .ok_or_else(|| Error::VersionNotFound {
                endpoint: self.endpoint.to_string(),
                version: version.to_owned(),
            })?;
        if entry.served.is_some() {
            return Ok(());
        }
        let Some(registry) = &self.registry else {
            return Err(self.conflict(format!(
                "version {version} is no longer in memory and the endpoint has no registry to rebuild it"
            )));
        };
        let spec = &entry.record.spec;
        let predictor = registry.predictor(&spec.model, spec.preprocess.as_deref())?;
        let predictor = crate::model::batching::from_spec(predictor, spec, &self.metrics)?;
        entry.served = Some(Arc::new(Served {
            id: Arc::from(version),
            model: Arc::from(spec.model.name.as_str()),
            predictor,
        }));
        Ok(())
    }

    /// Unloads the predictors of all but the `retain` most recent versions that no longer
    /// serve; the stable version and the one before it always stay loaded.
    pub(super) fn prune(&self, state: &mut State) {
        let live: Vec<String> = std::iter::once(state.stable().to_owned())
            .chain(state.stable_history.iter().rev().nth(1).cloned())
            .chain(state.candidate.iter().map(|c| c.0.clone()))
            .chain(state.shadow.iter().map(|s| s.0.clone()))
            .collect();
        let mut kept = 0;
        for entry in state.versions.iter_mut().rev() {
            if entry.served.is_none() || live.contains(&entry.record.id) {
                continue;
            }
            if kept < self.retain {
                kept += 1;
            } else {
                entry.served = None;
                self.stats.forget_recent(&entry.record.id);
            }
        }
    }

    pub(super) fn table(&self, state: &State) -> RoutingTable {
        let served = |id: &str| {
            state
                .entry(id)
                .and_then(|e| e.served.clone())
                .expect("routable versions are loaded")
        };
        RoutingTable {
            stable: served(state.stable()),
            candidate: state.candidate.as_ref().map(|(id, percent)| Share {
                served: served(id),
                percent: *percent,
            }),
            shadow: state.shadow.as_ref().map(|(id, percent)| Share {
                served: served(id),
                percent: *percent,
            }),
        }
    }
}

impl State {
    pub(super) fn stable(&self) -> &str {
        self.stable_history
            .last()
            .expect("an endpoint always has a stable version")
    }

    pub(super) fn entry(&self, id: &str) -> Option<&Entry> {
        self.versions.iter().find(|e| e.record.id == id)
    }

    pub(super) fn set_state(&mut self, id: &str, to: VersionState) {
        if let Some(entry) = self.versions.iter_mut().find(|e| e.record.id == id) {
            entry.record.state = to;
        }
    }

    pub(super) fn make_stable(&mut self, id: &str) {
        self.set_state(id, VersionState::Stable);
        self.stable_history.push(id.to_owned());
    }

    /// Starts watching the candidate when a policy is set.
    pub(super) fn start_watch(&mut self) {
        let (Some((candidate, _)), Some(_)) = (&self.candidate, &self.policy) else {
            return;
        };
        self.generation += 1;
        self.watch = Some(Watch {
            candidate: candidate.clone(),
            generation: self.generation,
            started: Instant::now(),
            started_at: SystemTime::now(),
            held_since: None,
            last: None,
            spawned: false,
        });
    }

    pub(super) fn event(
        &mut self,
        action: LifecycleAction,
        version: &str,
        percent: Option<u8>,
        automatic: bool,
        detail: String,
    ) {
        if self.events.len() == EVENTS_KEPT {
            self.events.pop_front();
        }
        self.events.push_back(LifecycleEvent {
            at: SystemTime::now(),
            action,
            version: version.to_owned(),
            percent,
            automatic,
            detail,
        });
    }
}

/// Evaluates the canary every `interval` until the watch it belongs to ends (promotion,
/// rollback, a new policy) or the endpoint is dropped. Without a Tokio runtime there is no
/// timer: evaluation then happens only through [`Lifecycle::evaluate_canary`].
pub(super) fn spawn_watch(deployment: Weak<Deployment>, generation: u64, interval: Duration) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::warn!(
            "no Tokio runtime: the automated canary runs only through evaluate_canary()"
        );
        return;
    };
    runtime.spawn(async move {
        loop {
            tokio::time::sleep(interval).await;
            let Some(inner) = deployment.upgrade() else {
                return;
            };
            let lifecycle = Lifecycle { inner };
            if !lifecycle.watching(generation) {
                return;
            }
            lifecycle.evaluate(Some(generation));
        }
    });
}
