use super::*;

fn h(ranges: &[&str], etag: Option<&'static str>) -> HeaderMap {
    let mut m = HeaderMap::new();
    for r in ranges {
        m.append(CONTENT_RANGE, HeaderValue::from_str(r).unwrap());
    }
    if let Some(e) = etag {
        m.insert(ETAG, HeaderValue::from_static(e));
    }
    m
}

#[test]
fn rfc9110_14_4_content_range() {
    assert_eq!(content_range(b"bytes 0-4/10"), Some((0, 4, 10)));
    assert_eq!(content_range(b"BYTES 9-9/10"), Some((9, 9, 10)));
    for bad in [
        "bytes 0-4/*",
        "bytes */10",
        "bytes 5-4/10",
        "bytes 0-10/10",
        "items 0-1/2",
        "bytes 0-1",
        "bytes -1-2/5",
        "bytes 0-99999999999999999999/1",
    ] {
        assert_eq!(content_range(bad.as_bytes()), None, "{bad}");
    }
}

#[test]
fn stored_parts_are_checked_against_the_body() {
    let body = Bytes::from_static(b"01234789");
    let p = Parts::of(206, &h(&["bytes 0-4/10", "bytes 7-9/10"], None), &body).unwrap();
    assert_eq!(p.slice(1, 3).unwrap(), "123");
    assert_eq!(p.slice(7, 9).unwrap(), "789");
    assert_eq!(p.slice(4, 7), None, "spans a gap");
    assert!(!p.is_complete());
    for bad in [
        &["bytes 0-4/10"][..],
        &["bytes 0-4/10", "bytes 3-5/10"],
        &["bytes 7-9/10", "bytes 0-4/10"],
        &["bytes 0-4/10", "bytes 7-9/11"],
        &[],
    ] {
        assert_eq!(Parts::of(206, &h(bad, None), &body), None, "{bad:?}");
    }
}

fn entry(ranges: &[&str], etag: &'static str, body: &'static [u8]) -> Entry {
    let mut e = Entry {
        meta: crate::cache::entry::Meta {
            status: 206,
            ..Default::default()
        },
        headers: h(ranges, Some(etag)),
        body: Bytes::from_static(body),
    };
    e.headers.insert("x-old", HeaderValue::from_static("1"));
    e
}

#[test]
fn rfc9111_3_4_parts_with_the_same_strong_validator_are_combined() {
    let older = entry(&["bytes 0-4/10"], "\"a\"", b"01234");
    let combine = |range: &str, etag, body: &'static [u8], cap| {
        let mut status = StatusCode::PARTIAL_CONTENT;
        let mut headers = h(&[range], Some(etag));
        let body = combine(
            &mut status,
            &mut headers,
            Bytes::from_static(body),
            Some(&older),
            cap,
            &[],
        );
        (status, headers, body)
    };
    // Adjacent: complete.
    let (s, hs, b) = combine("bytes 5-9/10", "\"a\"", b"56789", 100);
    assert_eq!((s, b.unwrap()), (StatusCode::OK, Bytes::from("0123456789")));
    assert_eq!(hs[CONTENT_LENGTH], "10");
    assert!(
        !hs.contains_key(CONTENT_RANGE) && hs["x-old"] == "1",
        "fields updated"
    );
    // Disjoint: two parts; overlapping: the new bytes win.
    let (s, hs, b) = combine("bytes 7-8/10", "\"a\"", b"78", 100);
    assert_eq!(
        (s, b.unwrap()),
        (StatusCode::PARTIAL_CONTENT, Bytes::from("0123478"))
    );
    let ranges: Vec<_> = hs.get_all(CONTENT_RANGE).iter().collect();
    assert_eq!(ranges, ["bytes 0-4/10", "bytes 7-8/10"]);
    let (_, hs, b) = combine("bytes 3-6/10", "\"a\"", b"xxxx", 100);
    assert_eq!(b.unwrap(), "012xxxx");
    assert_eq!(hs[CONTENT_RANGE], "bytes 0-6/10");
    // Another validator, a weak one, or over the cap: the new part alone.
    for (etag, cap) in [("\"b\"", 100), ("W/\"a\"", 100), ("\"a\"", 6)] {
        let (s, hs, b) = combine("bytes 5-9/10", etag, b"56789", cap);
        assert_eq!(
            (s, b.unwrap()),
            (StatusCode::PARTIAL_CONTENT, Bytes::from("56789"))
        );
        assert_eq!(hs[CONTENT_RANGE], "bytes 5-9/10", "{etag} {cap}");
    }
    // A body that is not the part it names is not stored.
    assert_eq!(combine("bytes 5-9/10", "\"a\"", b"567", 100).2, None);
}

use proptest::prelude::*;

proptest! {
    #[test]
    fn any_parts_decode_and_combine_without_panicking(
        older in proptest::collection::vec((0u64..40, 0u64..12), 0..5),
        newer in (0u64..40, 0u64..12),
        total in 1u64..48,
        cap in 0usize..64,
    ) {
        // Bodies as long as the ranges they name (when valid).
        let ranges: Vec<String> = older.iter().map(|(a, n)| format!("bytes {a}-{}/{total}", a + n)).collect();
        let refs: Vec<&str> = ranges.iter().map(String::as_str).collect();
        let len: u64 = older.iter().map(|(_, n)| n + 1).sum();
        let body = Bytes::from(vec![b'o'; len as usize]);
        let parts = Parts::of(206, &h(&refs, None), &body);
        if let Some(p) = &parts {
            prop_assert_eq!(p.stored_len(), body.len());
            for w in p.parts.windows(2) {
                prop_assert!(w[0].0 + (w[0].1.len() as u64) < w[1].0);
            }
        }
        let stored = Entry { headers: h(&refs, Some("\"a\"")), body, ..entry(&[], "\"a\"", b"") };
        let (a, n) = newer;
        let mut headers = h(&[&format!("bytes {a}-{}/{total}", a + n)], Some("\"a\""));
        let mut status = StatusCode::PARTIAL_CONTENT;
        let new = Bytes::from(vec![b'n'; n as usize + 1]);
        if let Some(b) = combine(&mut status, &mut headers, new, Some(&stored), cap, &[]) {
            // What is stored reads back as the parts it names.
            let again = Parts::of(status.as_u16(), &headers, &b);
            prop_assert!(again.is_some());
            if status == StatusCode::PARTIAL_CONTENT {
                let p = again.unwrap();
                prop_assert!(p.parts.iter().any(|(f, _)| *f <= a) && p.slice(a, a + n).is_some_and(|s| s.iter().all(|c| *c == b'n')));
            }
        }
    }
}

#[test]
fn only_single_byte_ranges_of_a_known_length_are_storable() {
    assert!(storable(&h(&["bytes 0-4/10"], None)));
    assert!(!storable(&h(&["bytes 0-4/*"], None)));
    assert!(!storable(&h(&[], None)));
    let mut multi = h(&["bytes 0-4/10"], None);
    multi.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("multipart/byteranges; boundary=x"),
    );
    assert!(!storable(&multi));
}

#[test]
fn rfc9110_14_4_a_part_whose_content_length_is_not_its_range_is_not_storable() {
    let sized = |len: &'static str| {
        let mut h = h(&["bytes 4-9/10"], None);
        h.insert(CONTENT_LENGTH, HeaderValue::from_static(len));
        h
    };
    assert!(storable(&sized("6")));
    assert!(!storable(&sized("5")));
    assert!(!storable(&sized("7")));
    assert!(!storable(&sized("x")));
    let mut two = h(&["bytes 0-1/10", "bytes 5-6/10"], None);
    two.insert(CONTENT_LENGTH, HeaderValue::from_static("4"));
    assert!(storable(&two));
}
