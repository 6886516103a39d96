use super::*;
use bytes::Bytes;

fn slot(url: &str) -> Slot {
    Slot {
        url: url.into(),
        spec: "".into(),
        variant: "_".into(),
    }
}

fn write(slot: Slot, bytes: usize, gen: u64, seen_ms: u64) -> Write {
    Write {
        etag: None,
        slot,
        entry: Bytes::from(vec![7u8; bytes]),
        fresh_until_ms: u64::MAX / 2000,
        keep_ms: 60_000,
        token: None,
        max_variants: 4,
        gen,
        seen_ms,
        writer: 0,
    }
}

fn home(capacity: usize) -> MemoryHome {
    let store = MemoryStore::builder().cache_capacity(capacity).build();
    // Resolving a home sets the state's capacity from the store.
    drop(store.cache_home());
    MemoryHome {
        entries: store.state(),
        store,
        metrics: Gauges::new(),
    }
}

#[tokio::test]
async fn ten_times_the_capacity_stays_within_it_and_evictions_are_counted() {
    let capacity = 1 << 20;
    let home = home(capacity);
    let body = 16 << 10;
    for i in 0..(10 * capacity / body) {
        let now = home.store.now_us() / 1000;
        let w = write(slot(&format!("u{i}")), body, 0, now);
        assert!(home.write(w).await.unwrap());
        // Measured: the bytes the map really holds, not the counter.
        let st = lock(&home.entries.0);
        let held: usize = st.entries.values().map(Stored::size).sum();
        assert!(held <= capacity, "{held} bytes held");
    }
    let st = lock(&home.entries.0);
    let evictions = st.entries.evictions();
    assert!(evictions >= 9 * (capacity / body) as u64, "{evictions}");
    let held: usize = st.entries.values().map(Stored::size).sum();
    assert!(held > capacity / 2, "the capacity is used: {held}");
    assert!(st.entries.bytes() <= capacity);
}

#[tokio::test]
async fn through_the_layer_the_store_stays_within_its_capacity() {
    use http_body_util::{BodyExt, Full};
    use tower::ServiceExt;
    let capacity = 1 << 20;
    let store = MemoryStore::builder().cache_capacity(capacity).build();
    let layer = crate::cache::ResponseCacheLayer::builder(store.clone())
        .build()
        .unwrap();
    let svc = tower::ServiceBuilder::new().layer(layer).service_fn(
        |_req: http::Request<Full<Bytes>>| async {
            let body = Full::new(Bytes::from(vec![b'x'; 64 << 10]));
            let res = http::Response::builder()
                .header("cache-control", "max-age=60")
                .body(body)
                .unwrap();
            Ok::<_, std::convert::Infallible>(res)
        },
    );
    let entries: Arc<Entries> = store.state();
    for i in 0..10 * capacity / (64 << 10) {
        let req = http::Request::get(format!("/r{i}"))
            .body(Full::default())
            .unwrap();
        let res = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(
            res.into_body().collect().await.unwrap().to_bytes().len(),
            64 << 10
        );
        let st = lock(&entries.0);
        let held: usize = st.entries.values().map(Stored::size).sum();
        assert!(held <= capacity, "{held} bytes held after {i} responses");
    }
    assert!(lock(&entries.0).entries.evictions() > 0);
}

#[tokio::test]
async fn a_purge_advances_the_generation_and_an_older_fill_cannot_land() {
    let home = home(1 << 20);
    let q = Lookup {
        slot: slot("u"),
        lock: None,
        force: false,
    };
    let before = home.lookup(&q).await.unwrap();
    assert_eq!(before.gen, 0);
    home.purge("u").await.unwrap();
    let after = home.lookup(&q).await.unwrap();
    assert_ne!(after.gen, before.gen);
    let stale = write(slot("u"), 10, before.gen, before.now_ms);
    assert!(
        !home.write(stale).await.unwrap(),
        "looked up before the purge"
    );
    assert!(home.lookup(&q).await.unwrap().entry.is_none());
    let at = after.now_ms.saturating_sub(FILL_MAX_MS + 1);
    assert!(
        !home
            .write(write(slot("u"), 10, after.gen, at))
            .await
            .unwrap(),
        "too old a fill"
    );
    let fresh = write(slot("u"), 10, after.gen, after.now_ms);
    assert!(home.write(fresh).await.unwrap());
    assert!(home.lookup(&q).await.unwrap().entry.is_some());
    home.purge("u").await.unwrap();
    home.purge("u").await.unwrap();
    let last = home.lookup(&q).await.unwrap().gen;
    assert!(last > after.gen, "every purge advances it");
}
