//! Tags (surrogate keys): the names a response gives itself in a header
//! (`Surrogate-Key: a b`, `Cache-Tag: a,b`), so that every entry carrying
//! one can be purged at once. Tag names are hashed with the layer's scope
//! before they reach a store key.

use std::sync::Arc;

use http::{HeaderMap, HeaderName};

use super::key::scoped;

/// Most tags read from one response; the rest are ignored.
pub(crate) const MAX_TAGS: usize = 64;

/// Where a layer reads tags, and whether its clients see that header.
#[derive(Debug, Clone)]
pub(crate) struct TagRules {
    pub(crate) header: HeaderName,
    pub(crate) strip: bool,
}

impl Default for TagRules {
    fn default() -> Self {
        Self {
            header: HeaderName::from_static("surrogate-key"),
            strip: true,
        }
    }
}

/// The store name of `tag` in `scope`.
pub(crate) fn tag_key(scope: &str, tag: &str) -> Arc<str> {
    scoped(scope, "tag", tag)
}

/// The tags names of a field value: separated by spaces or commas.
pub(crate) fn names(value: &str) -> impl Iterator<Item = &str> {
    value
        .split(|c: char| c == ',' || c.is_ascii_whitespace())
        .filter(|t| !t.is_empty())
}

impl TagRules {
    /// The store names of the tags a response carries (at most [`MAX_TAGS`]).
    pub(crate) fn of(&self, scope: &str, headers: &HeaderMap) -> Vec<Arc<str>> {
        let mut out: Vec<Arc<str>> = Vec::new();
        for line in headers.get_all(&self.header) {
            let Ok(line) = line.to_str() else { continue };
            for name in names(line) {
                let key = tag_key(scope, name);
                if out.len() < MAX_TAGS && !out.contains(&key) {
                    out.push(key);
                }
            }
        }
        out
    }

    /// Whether clients do not see the field `name`.
    pub(crate) fn hides(&self, name: &HeaderName) -> bool {
        self.strip && *name == self.header
    }

    /// Removes the tag header from what clients see, when configured.
    pub(crate) fn strip(&self, headers: &mut HeaderMap) {
        if self.strip {
            headers.remove(&self.header);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_separated_by_spaces_or_commas_and_scoped() {
        let mut h = HeaderMap::new();
        h.append("surrogate-key", "a  b,c".parse().unwrap());
        h.append("surrogate-key", "a d".parse().unwrap());
        let rules = TagRules::default();
        let tags = rules.of("s", &h);
        let want: Vec<_> = ["a", "b", "c", "d"].map(|t| tag_key("s", t)).into();
        assert_eq!(tags, want);
        assert_ne!(tag_key("s", "a"), tag_key("t", "a"));
        rules.strip(&mut h);
        assert!(h.is_empty());
    }
}
