//! KEY-VALUE settings: typed keys with aliases, an environment prefix, and errors that name the
//! key and list the valid ones (the shape of object_store's `ConfigKey` + `with_config`).
//!
//! A settings type declares its keys with [`setting_keys!`](crate::setting_keys), an enum whose
//! variants are the keys, and implements [`Settings`] by saying how one value applies to one key.
//! Everything else is shared: [`Settings::set`] from strings, [`Settings::with_config`] from a
//! typed key, [`Settings::apply`] for several pairs, [`Settings::from_env`] from
//! `PREFIX_KEY` environment variables. The core's [`WorkerSettings`](crate::WorkerSettings) and
//! [`PredictionLogConfig`](crate::observe::prediction_log::PredictionLogConfig), and every backend's
//! config, are built this way.
//!
//! ```
//! use serving_core::setting::{Setting, Settings};
//! use serving_core::{Error, Result, setting_keys};
//!
//! setting_keys! {
//!     /// The keys of [`Retry`].
//!     pub enum RetryKey {
//!         /// `attempts` (alias `tries`).
//!         Attempts = "attempts" | "tries",
//!         /// `backoff_ms`.
//!         BackoffMs = "backoff_ms",
//!     }
//! }
//!
//! #[derive(Debug, Default)]
//! struct Retry {
//!     attempts: u64,
//!     backoff_ms: u64,
//! }
//!
//! impl Settings for Retry {
//!     type Key = RetryKey;
//!     const ENV_PREFIX: &'static str = "MY_RETRY_";
//!
//!     fn set_key(&mut self, key: RetryKey, value: &Setting<'_>) -> Result<()> {
//!         match key {
//!             RetryKey::Attempts => self.attempts = value.positive()?,
//!             RetryKey::BackoffMs => self.backoff_ms = value.whole("0 to retry at once")?,
//!         }
//!         Ok(())
//!     }
//! }
//!
//! let retry = Retry::default().with_config(RetryKey::Attempts, "3")?;
//! assert_eq!(retry.attempts, 3);
//!
//! let mut retry = Retry::default();
//! retry.set("tries", "5")?; // an alias
//! assert_eq!(retry.attempts, 5);
//! let unknown = retry.set("colour", "red").unwrap_err();
//! assert_eq!(
//!     unknown.to_string(),
//!     "unknown setting `colour`; valid settings are: attempts, tries, backoff_ms"
//! );
//!
//! // `MY_RETRY_ATTEMPTS`, `MY_RETRY_TRIES`, `MY_RETRY_BACKOFF_MS`:
//! let retry = Retry::from_lookup(|var| (var == "MY_RETRY_BACKOFF_MS").then(|| "250".to_owned()))?;
//! assert_eq!(retry.backoff_ms, 250);
//! # Ok::<(), Error>(())
//! ```

use std::fmt::{Debug, Display};
use std::str::FromStr;

use crate::error::{Error, Result};

/// The keys of one settings type: an enum declared with [`setting_keys!`](crate::setting_keys).
///
/// [`FromStr`] accepts each key's name and its aliases and refuses anything else with
/// [`Error::UnknownSetting`], which lists [`SettingKey::NAMES`]; [`AsRef<str>`] gives the
/// key's own name.
pub trait SettingKey:
    Copy + Debug + Display + FromStr<Err = Error> + AsRef<str> + Send + Sync + 'static
{
    /// Every key, in declaration order.
    const ALL: &'static [Self];
    /// Every accepted name, each key's own followed by its aliases, in declaration order: the
    /// list an unknown key's error shows.
    const NAMES: &'static [&'static str];

    /// This key's aliases (names accepted besides its own).
    fn aliases(self) -> &'static [&'static str];

    /// The error for a key named `name` that does not exist.
    fn unknown(name: &str) -> Error {
        Error::UnknownSetting {
            key: name.to_owned(),
            valid: Self::NAMES.to_vec(),
        }
    }
}

/// A settings type set from KEY-VALUE pairs and from the environment.
///
/// Implement [`Settings::set_key`]; every other method is provided. Values are parsed at once,
/// so every error surfaces at the call that set the value and names that key and value.
pub trait Settings: Sized {
    /// The keys.
    type Key: SettingKey;

    /// The prefix of the environment variables [`Settings::from_env`] reads: the variable of
    /// key `dir` under prefix `SERVING_PREDICTION_LOG_` is `SERVING_PREDICTION_LOG_DIR`.
    const ENV_PREFIX: &'static str;

    /// Applies `value` to `key`. Parse it with [`Setting`]'s helpers so that an error names
    /// the key as the caller wrote it and the value.
    fn set_key(&mut self, key: Self::Key, value: &Setting<'_>) -> Result<()>;

    /// Sets one KEY-VALUE pair; the key may be an alias.
    ///
    /// # Errors
    /// [`Error::UnknownSetting`] listing the valid keys, or [`Error::InvalidSetting`] naming
    /// the key and the value.
    fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let typed = key.parse::<Self::Key>()?;
        self.set_key(typed, &Setting::new(key, value))
    }

    /// Sets one typed key, builder style.
    fn with_config(mut self, key: Self::Key, value: impl AsRef<str>) -> Result<Self> {
        self.set_key(key, &Setting::new(key.as_ref(), value.as_ref()))?;
        Ok(self)
    }

    /// Applies several KEY-VALUE pairs in order, stopping at the first error.
    fn apply<'a>(&mut self, pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<()> {
        pairs
            .into_iter()
            .try_for_each(|(key, value)| self.set(key, value))
    }

    /// The environment variable of one accepted name: [`Settings::ENV_PREFIX`] followed by the
    /// name in capitals, anything but letters and digits becoming `_` (`group.id` under
    /// `SERVING_KAFKA_` is `SERVING_KAFKA_GROUP_ID`).
    fn env_var(name: &str) -> String {
        let name: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        format!("{}{name}", Self::ENV_PREFIX)
    }

    /// The defaults, overridden by the environment variable of each key that is set (see
    /// [`Settings::env_var`]). For each key its own name's variable is read first, then its
    /// aliases'; the first one set is used. Variables under the prefix that name no key are
    /// left alone: the prefix may be shared by several settings types.
    fn from_env() -> Result<Self>
    where
        Self: Default,
    {
        Self::from_lookup(|var| std::env::var(var).ok())
    }

    /// [`Settings::from_env`] with the variables read through `lookup` (a test's map, a
    /// secrets store, …) instead of the process environment.
    fn from_lookup(mut lookup: impl FnMut(&str) -> Option<String>) -> Result<Self>
    where
        Self: Default,
    {
        let mut settings = Self::default();
        for &key in Self::Key::ALL {
            let names = std::iter::once(key.as_ref()).chain(key.aliases().iter().copied());
            let found = names
                .map(Self::env_var)
                .find_map(|var| lookup(&var).map(|value| (var, value)));
            if let Some((var, value)) = found {
                settings.set_key(key, &Setting::new(&var, &value))?;
            }
        }
        Ok(settings)
    }
}

/// One KEY-VALUE pair being applied: the key as the caller wrote it (or the environment
/// variable it came from) and the value, with parsers whose errors name both.
#[derive(Debug, Clone, Copy)]
pub struct Setting<'a> {
    key: &'a str,
    value: &'a str,
}

impl<'a> Setting<'a> {
    /// A key as written and its value.
    pub fn new(key: &'a str, value: &'a str) -> Self {
        Setting { key, value }
    }

    /// The key as written.
    pub fn key(&self) -> &'a str {
        self.key
    }

    /// The value as given.
    pub fn value(&self) -> &'a str {
        self.value
    }

    /// The value refused, with why: [`Error::InvalidSetting`].
    pub fn invalid(&self, reason: &str) -> Error {
        Error::InvalidSetting {
            key: self.key.to_owned(),
            value: self.value.to_owned(),
            reason: reason.to_owned(),
        }
    }

    /// The value, trimmed, as any [`FromStr`] type; the parser's message is the reason.
    pub fn parse<T>(&self) -> Result<T>
    where
        T: FromStr,
        T::Err: Display,
    {
        self.value
            .trim()
            .parse()
            .map_err(|e: T::Err| self.invalid(&e.to_string()))
    }

    /// The value, trimmed, refused when empty; `expected` says what was wanted.
    pub fn non_empty(&self, expected: &str) -> Result<&'a str> {
        let value = self.value.trim();
        if value.is_empty() {
            return Err(self.invalid(expected));
        }
        Ok(value)
    }

    /// The value as a whole number above zero.
    pub fn positive(&self) -> Result<u64> {
        self.value
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| self.invalid("expected a whole number greater than zero"))
    }

    /// The value as a whole number, zero allowed; `zero` says what zero means.
    pub fn whole(&self, zero: &str) -> Result<u64> {
        self.value
            .trim()
            .parse::<u64>()
            .map_err(|_| self.invalid(&format!("expected a whole number ({zero})")))
    }

    /// The value as a comma-separated list of non-empty, trimmed items, at least one.
    pub fn list(&self) -> Result<Vec<String>> {
        let items: Vec<String> = self
            .value
            .split(',')
            .map(|item| item.trim().to_owned())
            .collect();
        if items.iter().any(String::is_empty) {
            return Err(self.invalid("expected a comma-separated list of non-empty items"));
        }
        Ok(items)
    }
}

/// `names` as an array of `N`, for `KEYS` constants such as
/// [`WorkerSettings::KEYS`](crate::WorkerSettings::KEYS) (kept from before the typed keys):
/// `const KEYS: [&str; 2] = name_array(MyKey::NAMES);` fails to compile when `N` is not the
/// number of names.
pub const fn name_array<const N: usize>(names: &[&'static str]) -> [&'static str; N] {
    assert!(
        names.len() == N,
        "KEYS must list every name of the key enum"
    );
    let mut out = [""; N];
    let mut i = 0;
    while i < N {
        out[i] = names[i];
        i += 1;
    }
    out
}

/// Declares the key enum of a settings type: each variant with its name and optional aliases.
///
/// ```
/// serving_core::setting_keys! {
///     /// The keys of a queue's settings.
///     pub enum QueueKey {
///         /// `capacity` (alias `size`): how many items may wait.
///         Capacity = "capacity" | "size",
///         /// `timeout_ms`.
///         TimeoutMs = "timeout_ms",
///     }
/// }
/// use serving_core::setting::SettingKey;
/// assert_eq!("size".parse::<QueueKey>().unwrap(), QueueKey::Capacity);
/// assert_eq!(QueueKey::Capacity.as_ref(), "capacity");
/// assert_eq!(QueueKey::NAMES, ["capacity", "size", "timeout_ms"]);
/// ```
///
/// The enum gets `Debug`, `Clone`, `Copy`, `PartialEq`, `Eq`, `Hash`, `Display` and
/// `AsRef<str>` (its own name), [`FromStr`] (its name or an alias, else
/// [`Error::UnknownSetting`] listing every name) and [`SettingKey`]. It is `#[non_exhaustive]`,
/// so adding a key is not a breaking change.
#[macro_export]
macro_rules! setting_keys {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $(
                $(#[$variant_meta:meta])*
                $variant:ident = $key:literal $(| $alias:literal)*
            ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        $vis enum $name {
            $(
                $(#[$variant_meta])*
                $variant,
            )+
        }

        impl ::core::convert::AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                match self {
                    $( $name::$variant => $key, )+
                }
            }
        }

        impl ::core::fmt::Display for $name {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.write_str(::core::convert::AsRef::<str>::as_ref(self))
            }
        }

        impl ::core::str::FromStr for $name {
            type Err = $crate::Error;

            fn from_str(name: &str) -> ::core::result::Result<Self, $crate::Error> {
                match name {
                    $( $key $(| $alias)* => ::core::result::Result::Ok($name::$variant), )+
                    _ => ::core::result::Result::Err(
                        <Self as $crate::setting::SettingKey>::unknown(name),
                    ),
                }
            }
        }

        impl $crate::setting::SettingKey for $name {
            const ALL: &'static [Self] = &[$( $name::$variant ),+];
            const NAMES: &'static [&'static str] = &[$( $key, $( $alias, )* )+];

            fn aliases(self) -> &'static [&'static str] {
                match self {
                    $( $name::$variant => &[$( $alias ),*], )+
                }
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    crate::setting_keys! {
        /// Keys of [`Sample`].
        pub enum SampleKey {
            /// `size` (aliases `capacity`, `cap`).
            Size = "size" | "capacity" | "cap",
            /// `name`.
            Name = "name",
            /// `group.id`.
            GroupId = "group.id",
        }
    }

    #[derive(Debug, Default, PartialEq)]
    struct Sample {
        size: u64,
        name: String,
        group: String,
    }

    impl Settings for Sample {
        type Key = SampleKey;
        const ENV_PREFIX: &'static str = "TEST_SAMPLE_";

        fn set_key(&mut self, key: SampleKey, value: &Setting<'_>) -> Result<()> {
            match key {
                SampleKey::Size => self.size = value.positive()?,
                SampleKey::Name => self.name = value.non_empty("expected a name")?.to_owned(),
                SampleKey::GroupId => self.group = value.value().to_owned(),
            }
            Ok(())
        }
    }

    #[test]
    fn keys_parse_with_aliases_and_print_their_own_name() {
        for name in ["size", "capacity", "cap"] {
            assert_eq!(name.parse::<SampleKey>().unwrap(), SampleKey::Size);
        }
        assert_eq!(SampleKey::Size.as_ref(), "size");
        assert_eq!(SampleKey::GroupId.to_string(), "group.id");
        assert_eq!(
            SampleKey::ALL,
            [SampleKey::Size, SampleKey::Name, SampleKey::GroupId]
        );
        assert_eq!(SampleKey::Size.aliases(), ["capacity", "cap"]);
        assert_eq!(
            SampleKey::NAMES,
            ["size", "capacity", "cap", "name", "group.id"]
        );
        // Names are exact: no case folding, no trimming.
        assert!("Size".parse::<SampleKey>().is_err());
        assert!(" size".parse::<SampleKey>().is_err());
    }

    #[test]
    fn an_alias_sets_the_same_field() {
        let mut sample = Sample::default();
        sample.set("capacity", "7").unwrap();
        assert_eq!(sample.size, 7);
        sample.apply([("cap", "8"), ("name", " x ")]).unwrap();
        assert_eq!((sample.size, sample.name.as_str()), (8, "x"));
        let built = Sample::default().with_config(SampleKey::Size, "9").unwrap();
        assert_eq!(built.size, 9);
    }

    #[test]
    fn an_unknown_key_is_named_with_every_valid_one() {
        let error = Sample::default().set("colour", "red").unwrap_err();
        let Error::UnknownSetting { key, valid } = &error else {
            panic!("{error:?}");
        };
        assert_eq!(key, "colour");
        assert_eq!(valid, &["size", "capacity", "cap", "name", "group.id"]);
        assert_eq!(
            error.to_string(),
            "unknown setting `colour`; valid settings are: size, capacity, cap, name, group.id"
        );
    }

    #[test]
    fn a_bad_value_names_the_key_as_written_and_the_value() {
        let error = Sample::default().set("cap", "0").unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid value `0` for setting `cap`: expected a whole number greater than zero"
        );
        let error = Sample::default()
            .with_config(SampleKey::Name, "  ")
            .unwrap_err();
        assert!(
            matches!(&error, Error::InvalidSetting { key, value, .. } if key == "name" && value == "  "),
            "{error:?}"
        );
        // Stops at the first error; what came before it stays applied.
        let mut sample = Sample::default();
        assert!(
            sample
                .apply([("size", "3"), ("size", "x"), ("name", "n")])
                .is_err()
        );
        assert_eq!((sample.size, sample.name.as_str()), (3, ""));
    }

    #[test]
    fn the_environment_is_read_under_the_prefix() {
        let vars: HashMap<&str, &str> = [
            ("TEST_SAMPLE_CAPACITY", "4"),
            ("TEST_SAMPLE_NAME", "from-env"),
            ("TEST_SAMPLE_GROUP_ID", "g"),
            ("TEST_SAMPLE_COLOUR", "ignored: names no key"),
            ("NAME", "ignored: no prefix"),
        ]
        .into();
        let lookup = |var: &str| vars.get(var).map(|v| (*v).to_owned());
        let sample = Sample::from_lookup(lookup).unwrap();
        assert_eq!(
            sample,
            Sample {
                size: 4,
                name: "from-env".into(),
                group: "g".into(),
            }
        );
        assert_eq!(Sample::env_var("group.id"), "TEST_SAMPLE_GROUP_ID");

        // A key's own name wins over an alias; a bad value names the variable.
        let vars: HashMap<&str, &str> =
            [("TEST_SAMPLE_SIZE", "5"), ("TEST_SAMPLE_CAP", "6")].into();
        let sample = Sample::from_lookup(|var| vars.get(var).map(|v| (*v).to_owned())).unwrap();
        assert_eq!(sample.size, 5);
        let error = Sample::from_lookup(|var| (var == "TEST_SAMPLE_CAP").then(|| "no".into()))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("`TEST_SAMPLE_CAP`") && error.contains("`no`"),
            "{error}"
        );
    }

    #[test]
    fn from_env_reads_the_process_environment() {
        // The process environment cannot be changed safely in a threaded test, so this reads
        // a variable every environment has, under an empty prefix.
        crate::setting_keys! {
            /// Keys of [`Path`].
            enum PathKey {
                /// `path`.
                Path = "path",
            }
        }
        #[derive(Default)]
        struct Path(String);
        impl Settings for Path {
            type Key = PathKey;
            const ENV_PREFIX: &'static str = "";
            fn set_key(&mut self, _: PathKey, value: &Setting<'_>) -> Result<()> {
                self.0 = value.value().to_owned();
                Ok(())
            }
        }
        let path = Path::from_env().unwrap();
        assert_eq!(Some(path.0), std::env::var("PATH").ok());
    }

    #[test]
    fn lists_are_comma_separated() {
        let setting = Setting::new("brokers", " a:1, b:2 ");
        assert_eq!(setting.list().unwrap(), ["a:1", "b:2"]);
        assert!(Setting::new("brokers", "a:1,,b:2").list().is_err());
        assert!(Setting::new("brokers", "").list().is_err());
        assert_eq!(Setting::new("n", " 12 ").parse::<u16>().unwrap(), 12);
        let error = Setting::new("n", "70000").parse::<u16>().unwrap_err();
        assert!(error.to_string().contains("`n`"), "{error}");
    }

    #[test]
    fn name_array_copies_every_name() {
        const KEYS: [&str; 5] = name_array(SampleKey::NAMES);
        assert_eq!(KEYS, SampleKey::NAMES);
    }
}
