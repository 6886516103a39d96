//! Error types shared by every layer.

use std::fmt;
use std::time::Duration;

/// Why a store could not answer.
///
/// Layers never turn this into a service error: each layer maps it to a
/// response according to its failure policy and logs it with `tracing`.
/// `Debug` prints the same sentence as `Display`, so `main() -> Result`
/// reports it readably.
pub struct StoreError {
    kind: StoreErrorKind,
}

/// The kind of a [`StoreError`].
#[derive(Debug)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// The store did not answer within its deadline.
    Timeout(Duration),
    /// The circuit breaker is open after repeated failures: the store was not asked.
    CircuitOpen,
    /// The backend answered with an error (connection refused, script error, ...).
    Backend(Box<dyn std::error::Error + Send + Sync>),
    /// The backend answered with something this crate cannot interpret.
    Protocol(String),
    /// The store was configured with values that cannot work.
    Config(ConfigError),
    /// Redis refused a write: `maxmemory` reached with the `noeviction`
    /// policy. Reads still work; the layers follow their failure policies.
    OutOfMemory(String),
}

impl StoreError {
    pub(crate) fn timeout(after: Duration) -> Self {
        Self {
            kind: StoreErrorKind::Timeout(after),
        }
    }

    pub(crate) fn circuit_open() -> Self {
        Self {
            kind: StoreErrorKind::CircuitOpen,
        }
    }

    pub(crate) fn backend(err: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self {
            kind: StoreErrorKind::Backend(Box::new(err)),
        }
    }

    pub(crate) fn config(err: ConfigError) -> Self {
        Self {
            kind: StoreErrorKind::Config(err),
        }
    }

    /// The error of a Redis reply: `OOM` replies are told apart.
    #[cfg(feature = "redis")]
    pub(crate) fn redis(err: redis::RedisError) -> Self {
        if err.code() == Some("OOM") {
            return Self {
                kind: StoreErrorKind::OutOfMemory(err.to_string()),
            };
        }
        Self::backend(err)
    }

    /// `true` when Redis refused a write for lack of memory (`noeviction`).
    pub fn is_out_of_memory(&self) -> bool {
        matches!(self.kind, StoreErrorKind::OutOfMemory(_))
    }

    pub(crate) fn protocol(msg: impl Into<String>) -> Self {
        Self {
            kind: StoreErrorKind::Protocol(msg.into()),
        }
    }

    /// The same error for another waiter of one failed batch call.
    pub(crate) fn duplicate(&self) -> Self {
        let kind = match &self.kind {
            StoreErrorKind::Timeout(d) => StoreErrorKind::Timeout(*d),
            StoreErrorKind::CircuitOpen => StoreErrorKind::CircuitOpen,
            StoreErrorKind::Backend(e) => StoreErrorKind::Backend(e.to_string().into()),
            StoreErrorKind::Protocol(m) => StoreErrorKind::Protocol(m.clone()),
            StoreErrorKind::Config(c) => StoreErrorKind::Config(c.clone()),
            StoreErrorKind::OutOfMemory(m) => StoreErrorKind::OutOfMemory(m.clone()),
        };
        Self { kind }
    }

    /// What went wrong.
    pub fn kind(&self) -> &StoreErrorKind {
        &self.kind
    }

    /// `true` when the store did not answer within its deadline.
    pub fn is_timeout(&self) -> bool {
        matches!(self.kind, StoreErrorKind::Timeout(_))
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            StoreErrorKind::Timeout(d) => write!(
                f,
                "store did not answer within {d:?} (down, unreachable, reconnecting or slow)"
            ),
            StoreErrorKind::CircuitOpen => {
                f.write_str("store skipped: circuit breaker open after repeated failures")
            }
            StoreErrorKind::Backend(e) => write!(f, "store backend error: {e}"),
            StoreErrorKind::Protocol(m) => write!(f, "unexpected store reply: {m}"),
            StoreErrorKind::Config(c) => fmt::Display::fmt(c, f),
            StoreErrorKind::OutOfMemory(m) => write!(
                f,
                "Redis is out of memory and refuses writes (maxmemory reached with the \
                 noeviction policy: raise maxmemory, or pick a volatile-* eviction policy): {m}"
            ),
        }
    }
}

impl fmt::Debug for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            StoreErrorKind::Backend(e) => Some(&**e),
            StoreErrorKind::Config(c) => Some(c),
            _ => None,
        }
    }
}

/// A layer or store was configured with values that cannot work. `Debug`
/// prints the same sentence as `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct ConfigError {
    msg: String,
}

impl ConfigError {
    pub(crate) fn new(msg: impl Into<String>) -> Self {
        Self { msg: msg.into() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration: {}", self.msg)
    }
}

impl fmt::Debug for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for ConfigError {}

/// Checks a key prefix: 1-64 characters, no hash-tag braces (Redis Cluster
/// reads `{...}` as a hash tag), no trailing `:` (the crate adds the separator).
pub(crate) fn check_prefix(prefix: &str) -> Result<(), ConfigError> {
    if prefix.is_empty() || prefix.len() > 64 || prefix.contains(['{', '}']) {
        return Err(ConfigError::new(format!(
            "key prefix {prefix:?} must be 1-64 characters without '{{' or '}}'"
        )));
    }
    if prefix.ends_with(':') {
        return Err(ConfigError::new(format!(
            "key prefix {prefix:?} must not end with ':'; the crate adds the separator \
             (keys look like {}:rl:...)",
            prefix.trim_end_matches(':')
        )));
    }
    Ok(())
}

/// Checks a configured name that becomes part of store keys and headers
/// (a scope, a policy name): 1-64 characters of `[A-Za-z0-9_.-]`.
pub(crate) fn check_name(what: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(format!(
            "{what} {name:?} must be 1-64 characters of [A-Za-z0-9_.-]"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_debug_as_the_sentence_they_display() {
        let e = ConfigError::new("the store deadline must be above zero");
        assert_eq!(format!("{e:?}"), format!("{e}"));
        assert_eq!(
            format!("{e:?}"),
            "invalid configuration: the store deadline must be above zero"
        );
        let s = StoreError::timeout(std::time::Duration::from_millis(50));
        assert_eq!(format!("{s:?}"), format!("{s}"));
    }

    #[test]
    fn prefixes_are_checked_with_a_reason() {
        assert!(check_prefix("myapp").is_ok());
        let colon = check_prefix("myapp:").unwrap_err().to_string();
        assert!(colon.contains("must not end with ':'"), "{colon}");
        assert!(check_prefix("a{b}").is_err());
        assert!(check_prefix("").is_err());
    }
}
