//! Circuit breakers per slot range: one for a standalone Redis; on a
//! cluster, one per range of hash slots, so a dead master opens only the
//! breakers of its own slots.

use super::breaker::{Breaker, BreakerConfig};
use super::conn::RedisConn;

/// Breaker ranges on a cluster: 64 contiguous ranges of 256 slots. A master
/// owns whole ranges (or nearly), so its failure opens only its own.
#[cfg(feature = "cluster")]
const CLUSTER_BREAKERS: usize = 64;

pub(crate) fn breakers(conn: &RedisConn, config: BreakerConfig) -> Box<[Breaker]> {
    let n = match conn {
        RedisConn::Standalone(_) => 1,
        #[cfg(feature = "cluster")]
        RedisConn::Cluster(_) => CLUSTER_BREAKERS,
    };
    (0..n).map(|_| Breaker::new(config)).collect()
}

/// A key whose slot falls in breaker range `index` of `n`: the background
/// probe asks the master of that range with it.
#[cfg(feature = "cluster")]
pub(crate) fn probe_key(index: usize, n: usize) -> String {
    (0u32..)
        .map(|i| format!("trl-probe-{i}"))
        .find(|k| usize::from(slot::of(k.as_bytes())) * n / slot::SLOTS == index)
        .unwrap_or_default()
}

/// Redis Cluster's key slot: CRC16 (XMODEM) of the key's hash tag, or of the
/// whole key when it has none, modulo 16384.
pub(crate) mod slot {
    pub(crate) const SLOTS: usize = 16384;

    #[cfg(feature = "cluster")]
    pub(crate) fn of(key: &[u8]) -> u16 {
        let tagged = key
            .iter()
            .position(|&b| b == b'{')
            .and_then(|open| {
                let rest = &key[open + 1..];
                let close = rest.iter().position(|&b| b == b'}')?;
                (close > 0).then(|| &rest[..close])
            })
            .unwrap_or(key);
        crc16::State::<crc16::XMODEM>::calculate(tagged) % SLOTS as u16
    }

    #[cfg(not(feature = "cluster"))]
    pub(crate) fn of(_key: &[u8]) -> u16 {
        0
    }

    #[cfg(all(test, feature = "cluster"))]
    mod tests {
        use redis::cluster_routing::Slot;

        #[test]
        fn slots_match_redis_rs() {
            for key in [
                "a",
                "foo",
                "{user1000}.following",
                "x{}y",
                "p:rl:{s:abc}:n",
                "{a}{b}",
            ] {
                let ours = super::of(key.as_bytes());
                let mut same = None;
                for s in 0..super::SLOTS as u16 {
                    if Slot::new(s) == Some(Slot::for_key(key)) {
                        same = Some(s);
                        break;
                    }
                }
                assert_eq!(Some(ours), same, "{key}");
            }
        }
    }
}
