//! RFC 9111 §4.3.4: a `304` freshens every stored response its validator
//! selects, not only the one revalidated. A strong `ETag` selects every
//! variant of the URL stored with that `ETag`: each gets the 304's fields
//! (§3.2) and a lifetime computed again, and is written back under the
//! URL's generation (a purge since the read keeps it out) and its tags.
//! A weak validator (a weak `ETag`, `Last-Modified`) cannot tell variants
//! apart: only the response the request selected is freshened.

use std::sync::Arc;

use bytes::Bytes;
use http::header::ETAG;
use http::{HeaderMap, StatusCode};

use super::conditional::Tag;
use super::decide::decode_for;
use super::entry::encode;
use super::fill::meta;
use super::key::Slot;
use super::policy::{verdict, Asked, Verdict};
use super::response::merge_fields;
use super::shared::{spawn, Shared};
use super::store::{Tagging, Write};

/// The strong `ETag` of `headers`, if it has one.
pub(crate) fn strong_etag(headers: &HeaderMap) -> Option<&[u8]> {
    let tag = Tag::parse(headers.get(ETAG)?.as_bytes())?;
    (!tag.weak).then_some(tag.opaque)
}

/// After a `304` (`fields`) revalidated `slot`'s entry: freshens, in the
/// background, the URL's other variants stored with the same strong `ETag`.
pub(crate) fn other_variants(shared: &Arc<Shared>, slot: &Slot, fields: &HeaderMap, asked: Asked) {
    let Some(etag) = strong_etag(fields).filter(|_| !slot.spec.is_empty()) else {
        return;
    };
    let etag = Bytes::copy_from_slice(etag);
    let (shared, slot, fields) = (shared.clone(), slot.clone(), fields.clone());
    spawn(async move {
        let home = shared.home.clone();
        let Ok(stored) = home.variants(&slot.url, &etag).await else {
            return;
        };
        if stored.spec.as_deref() != Some(&*slot.spec) {
            return;
        }
        for (variant, raw) in stored.entries {
            if variant == slot.variant {
                continue;
            }
            let other = Slot {
                url: slot.url.clone(),
                spec: slot.spec.clone(),
                variant,
            };
            let Some(entry) = decode_for(&other, raw, stored.gen) else {
                continue;
            };
            if strong_etag(&entry.headers) != Some(&etag[..]) {
                continue;
            }
            let headers = merge_fields(&entry.headers, &fields, &shared.cfg.rules.targeted);
            let status = StatusCode::from_u16(entry.meta.status).unwrap_or(StatusCode::OK);
            let now = stored.now_ms.max(stored.gen.div_ceil(1000));
            let Verdict::Store(l) = verdict(&shared.cfg.rules, asked, status, &headers, now) else {
                continue;
            };
            let m = meta(&other, status, now, &l);
            let tags = shared.cfg.tags.of(&shared.cfg.key.scope, &headers);
            if !tags.is_empty() {
                let tagging = Tagging {
                    url: other.url.clone(),
                    tags,
                    keep_ms: l.keep_ms,
                    seen_ms: stored.now_ms,
                };
                if !matches!(home.tag(tagging).await, Ok(true)) {
                    continue;
                }
            }
            let write = Write {
                entry: encode(&m, &headers, std::slice::from_ref(&entry.body)),
                fresh_until_ms: m.fresh_until_ms(),
                keep_ms: l.keep_ms,
                token: None,
                max_variants: shared.cfg.max_variants,
                gen: stored.gen,
                seen_ms: stored.now_ms,
                etag: Some(etag.clone()),
                // Every in-process tier drops its copies of the URL.
                writer: 0,
                slot: other,
            };
            if home.write(write).await.is_ok_and(|w| w) {
                shared.retries.stored(l.keep_ms);
            }
        }
    });
}
