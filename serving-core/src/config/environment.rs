//! Exporting an endpoint's KEY-VALUE settings to the process environment, as the original
//! product exported its "Flask config".
//!
//! Every setting is always readable through [`Context::setting`](crate::Context::setting),
//! from the first request on, with no restriction. Exporting to the process environment (for
//! libraries that read `std::env::var`) is different: changing the environment while another
//! thread may read it is undefined behaviour on most platforms, which is why
//! `std::env::set_var` is `unsafe`. So it happens at one documented point only:
//! [`ServerSettings::export_env`], called at start-up while the process has a single thread,
//! and it checks that it does.

use crate::config::spec::ServerSettings;
use crate::error::{Error, Result};

impl ServerSettings {
    /// Exports every `env` pair to this process's environment.
    ///
    /// Call it once, first thing in a plain `fn main()`, before the Tokio runtime or any other
    /// thread starts; then build the runtime and the endpoint:
    ///
    /// ```no_run
    /// use serving_core::EndpointSpec;
    ///
    /// fn main() -> Result<(), Box<dyn std::error::Error>> {
    ///     let spec = EndpointSpec::from_yaml(&std::fs::read_to_string("endpoint.yaml")?)?;
    ///     spec.server.export_env()?; // still single-threaded here
    ///     let runtime = tokio::runtime::Runtime::new()?;
    ///     runtime.block_on(async {
    ///         // build the endpoint from `spec` and serve it
    ///     });
    ///     Ok(())
    /// }
    /// ```
    ///
    /// # Errors
    /// - [`Error::InvalidSetting`] for a key that is empty or holds `=` or NUL, or a value that
    ///   holds NUL; nothing is exported then.
    /// - [`Error::Action`] when the process runs more than one thread (checked on Linux through
    ///   `/proc/self/task`), and on platforms where that cannot be checked: the environment is
    ///   left alone rather than risk undefined behaviour. Use
    ///   [`Context::setting`](crate::Context::setting) there.
    pub fn export_env(&self) -> Result<()> {
        for (key, value) in &self.env {
            let reason = if key.is_empty() || key.contains(['=', '\0']) {
                Some("an environment variable name must be non-empty and hold no `=` or NUL")
            } else if value.contains('\0') {
                Some("an environment variable value must hold no NUL")
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(Error::InvalidSetting {
                    key: key.clone(),
                    value: value.clone(),
                    reason: reason.into(),
                });
            }
        }
        let threads = thread_count()
            .ok_or_else(|| not_exported("cannot count this process's threads on this platform"))?;
        if threads != 1 {
            return Err(not_exported(&format!(
                "the process runs {threads} threads; call export_env before starting the runtime or any thread"
            )));
        }
        for (key, value) in &self.env {
            set_var(key, value);
        }
        tracing::info!(keys = ?self.env.keys().collect::<Vec<_>>(), "server settings exported to the environment");
        Ok(())
    }
}

fn not_exported(reason: &str) -> Error {
    Error::Action {
        action: "exporting server settings to the environment".into(),
        source: reason.into(),
    }
}

/// Threads in this process, where the platform tells.
fn thread_count() -> Option<usize> {
    if cfg!(target_os = "linux") {
        std::fs::read_dir("/proc/self/task")
            .ok()
            .map(Iterator::count)
    } else {
        None
    }
}

#[allow(unsafe_code)]
fn set_var(key: &str, value: &str) {
    // SAFETY: only called from `export_env` right after it found this process to have a single
    // thread (the caller's), so no other thread can read or write the environment
    // concurrently; keys and values were checked for `=` and NUL.
    unsafe { std::env::set_var(key, value) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_in_a_multi_threaded_process_and_bad_keys_first() {
        let mut settings = ServerSettings::default();
        settings
            .env
            .insert("SERVING_EXPORT_TEST".into(), "x".into());
        // The test harness runs tests on their own threads: never a single thread here.
        let refused = settings.export_env().unwrap_err();
        assert!(matches!(refused, Error::Action { .. }), "{refused}");
        assert!(std::env::var("SERVING_EXPORT_TEST").is_err());
        settings.env.insert("BAD=KEY".into(), "x".into());
        assert!(matches!(
            settings.export_env(),
            Err(Error::InvalidSetting { .. })
        ));
    }
}
