//! The `Idempotency-Key` request header (draft-ietf-httpapi-idempotency-key-header).

use http::header::{HeaderMap, HeaderName};

/// `Idempotency-Key`.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// The longest key accepted, in characters.
pub(crate) const MAX_KEY_LEN: usize = 255;

/// The key of one request: 1-255 visible ASCII characters.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct IdempotencyKey(String);

impl IdempotencyKey {
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys are client text: debug output shows their length only.
        write!(f, "IdempotencyKey(len {})", self.0.len())
    }
}

/// Reads the key of a request: `Ok(None)` when the header is absent, `Err`
/// (answered 400) with a message for the client when it cannot be used.
///
/// The draft makes the field a structured-field string (`"8e03978e-..."`);
/// a bare value without quotes (`8e03978e-...`, as many clients send it) is
/// accepted too. Either way the key is the text between the quotes, so
/// `"abc"` and `abc` name the same record. Parameters are ignored. Lists
/// (`"a", "b"` or the header sent twice) are refused.
pub(crate) fn parse(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, String> {
    let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err("the Idempotency-Key header was sent more than once".to_owned());
    }
    let raw = value.as_bytes();
    let text = if raw.first() == Some(&b'"') {
        let item: sfv::Item = sfv::Parser::new(raw).parse().map_err(|_| {
            if sfv::Parser::new(raw)
                .parse::<sfv::List>()
                .is_ok_and(|l| l.len() > 1)
            {
                "the Idempotency-Key header must hold one key, not a list".to_owned()
            } else {
                "the Idempotency-Key header is not a structured-field string: \
                 send one quoted key of visible ASCII, like \"8e03978e-40d5\""
                    .to_owned()
            }
        })?;
        match item.bare_item.as_string() {
            Some(s) => s.as_str().to_owned(),
            None => return Err("the Idempotency-Key header is not a string".to_owned()),
        }
    } else {
        if raw.iter().any(|b| matches!(b, b',' | b';')) {
            return Err("the Idempotency-Key header must hold one key, not a list".to_owned());
        }
        // Visibility and length are checked below, like a quoted key.
        String::from_utf8_lossy(raw).into_owned()
    };
    check(&text)?;
    Ok(Some(IdempotencyKey(text)))
}

fn check(text: &str) -> Result<(), String> {
    if text.is_empty() {
        return Err("the Idempotency-Key header is empty".to_owned());
    }
    if text.len() > MAX_KEY_LEN {
        return Err(format!(
            "the Idempotency-Key is longer than {MAX_KEY_LEN} characters"
        ));
    }
    if !text.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(
            "the Idempotency-Key must be visible ASCII characters only (no spaces, controls or non-ASCII)"
                .to_owned(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn key_of(values: &[&[u8]]) -> Result<Option<String>, String> {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(IDEMPOTENCY_KEY, HeaderValue::from_bytes(v).unwrap());
        }
        parse(&h).map(|k| k.map(|k| k.as_str().to_owned()))
    }

    #[test]
    fn quoted_and_bare_keys_name_the_same_record() {
        let uuid = "8e03978e-40d5-43e8-bc93-6894a57f9324";
        assert_eq!(
            key_of(&[format!("\"{uuid}\"").as_bytes()]),
            Ok(Some(uuid.to_owned()))
        );
        assert_eq!(key_of(&[uuid.as_bytes()]), Ok(Some(uuid.to_owned())));
        assert_eq!(
            key_of(&[b"\"k\";p=1"]),
            Ok(Some("k".to_owned())),
            "parameters ignored"
        );
        assert_eq!(key_of(&[]), Ok(None));
    }

    #[test]
    fn bad_keys_are_refused_with_a_reason() {
        let long = "a".repeat(256);
        let max = "a".repeat(255);
        assert_eq!(key_of(&[max.as_bytes()]), Ok(Some(max.clone())));
        for (bad, why) in [
            (&b""[..], "empty"),
            (b"\"\"", "empty"),
            (long.as_bytes(), "longer than 255"),
            (b"caf\xc3\xa9", "visible ASCII"),
            (b"\"caf\xc3\xa9\"", "structured-field"),
            (b"ab\tc", "visible ASCII"),
            (b"\"ab\tc\"", "structured-field"),
            (b"\"a\",\"b\"", "one key, not a list"),
            (b"a b", "visible ASCII"),
            (b"\"a\", \"b\"", "one key, not a list"),
            (b"a,b", "not a list"),
            (b"\"unterminated", "structured-field"),
        ] {
            let err = key_of(&[bad]).unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
        let err = key_of(&[b"a", b"b"]).unwrap_err();
        assert!(err.contains("more than once"), "{err}");
    }
}
