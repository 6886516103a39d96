//! Keys from IP addresses: the peer, or the client behind trusted proxies.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::Extensions;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::{ClientKey, KeyError, KeyExtractor, RequestView};

/// The peer address of a connection, as a request extension. Servers set it
/// per connection (see the hyper example); [`PeerIp`] also reads a plain
/// `SocketAddr` extension, axum's `ConnectInfo<SocketAddr>` (feature
/// `axum`) and any type given to [`PeerIp::from_extension`] (tonic's
/// `TcpConnectInfo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

type PeerFn = Arc<dyn Fn(&Extensions) -> Option<IpAddr> + Send + Sync>;

/// The peer's IP address, IPv6 bucketed by prefix (default /64, since one
/// host usually holds a whole /64) and IPv4 by /32.
///
/// ```
/// use std::net::SocketAddr;
/// use tower_redis_layers::key::PeerIp;
///
/// // With axum: `axum::extract::ConnectInfo<SocketAddr>` set by
/// // `into_make_service_with_connect_info::<SocketAddr>()`.
/// # #[derive(Clone)] struct ConnectInfo<T>(T);
/// let key = PeerIp::from_extension(|c: &ConnectInfo<SocketAddr>| c.0.ip());
/// # drop(key);
/// ```
#[derive(Clone)]
pub struct PeerIp {
    from: Option<PeerFn>,
    v4_prefix: u8,
    v6_prefix: u8,
}

impl fmt::Debug for PeerIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerIp")
            .field("custom_extension", &self.from.is_some())
            .field("v4_prefix", &self.v4_prefix)
            .field("v6_prefix", &self.v6_prefix)
            .finish()
    }
}

impl Default for PeerIp {
    fn default() -> Self {
        Self::new()
    }
}

impl PeerIp {
    /// Reads [`PeerAddr`], a `SocketAddr` request extension, or (feature
    /// `axum`) axum's `ConnectInfo<SocketAddr>`.
    pub fn new() -> Self {
        Self {
            from: None,
            v4_prefix: 32,
            v6_prefix: 64,
        }
    }

    /// Reads the peer from the request extension of type `T`; `f` returns an
    /// `IpAddr` or an `Option<IpAddr>` (tonic's `TcpConnectInfo::remote_addr`).
    pub fn from_extension<T, F, R>(f: F) -> Self
    where
        T: Send + Sync + 'static,
        F: Fn(&T) -> R + Send + Sync + 'static,
        R: Into<Option<IpAddr>>,
    {
        Self {
            from: Some(Arc::new(move |ext: &Extensions| {
                ext.get::<T>().and_then(|t| f(t).into())
            })),
            ..Self::new()
        }
    }

    /// Buckets IPv6 peers by this prefix length (default 64; 128 = per address).
    pub fn ipv6_prefix(mut self, len: u8) -> Self {
        self.v6_prefix = len.min(128);
        self
    }

    /// Buckets IPv4 peers by this prefix length (default 32 = per address).
    pub fn ipv4_prefix(mut self, len: u8) -> Self {
        self.v4_prefix = len.min(32);
        self
    }

    /// The peer address of `ext`, unbucketed.
    pub(crate) fn peer(&self, ext: &Extensions) -> Option<IpAddr> {
        if let Some(from) = &self.from {
            return from(ext);
        }
        let found = ext
            .get::<PeerAddr>()
            .map(|p| p.0.ip())
            .or_else(|| ext.get::<SocketAddr>().map(SocketAddr::ip));
        #[cfg(feature = "axum")]
        let found = found.or_else(|| {
            ext.get::<axum::extract::ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip())
        });
        found
    }

    pub(super) fn key_for(&self, ip: IpAddr) -> ClientKey {
        let ip = canonical(ip);
        let net = match ip {
            IpAddr::V4(v4) => IpNet::V4(Ipv4Net::new_assert(v4, self.v4_prefix).trunc()),
            IpAddr::V6(v6) => IpNet::V6(Ipv6Net::new_assert(v6, self.v6_prefix).trunc()),
        };
        ClientKey::new("ip", net.to_string())
    }
}

impl KeyExtractor for PeerIp {
    fn extract(&self, req: &RequestView<'_>) -> Result<ClientKey, KeyError> {
        let ip = self.peer(req.extensions).ok_or(KeyError::Missing)?;
        Ok(self.key_for(ip))
    }

    fn describe(&self) -> String {
        if self.from.is_some() {
            return "the peer address (from a custom request extension)".to_owned();
        }
        let axum = if cfg!(feature = "axum") {
            ", axum's ConnectInfo<SocketAddr>"
        } else {
            "; on axum enable this crate's `axum` feature"
        };
        format!(
            "the peer address (a PeerAddr or SocketAddr request extension{axum}; \
             the server must set it, e.g. axum's into_make_service_with_connect_info::<SocketAddr>())"
        )
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`, what a dual-stack socket
/// reports) are the IPv4 client they carry.
pub(super) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{ClientIp, ForwardingHeader};
    use http::Request;

    fn req(peer: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder();
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let mut r = b.body(()).unwrap();
        r.extensions_mut()
            .insert(PeerAddr(format!("{peer}:4000").parse().unwrap()));
        r
    }

    fn key_of(ex: &impl KeyExtractor, r: &Request<()>) -> ClientKey {
        ex.extract(&RequestView::new(r)).unwrap()
    }

    fn ip(s: &str) -> ClientKey {
        ClientKey::new("ip", s)
    }

    #[test]
    fn peer_ip_reads_extensions_and_buckets_ipv6() {
        let ex = PeerIp::new();
        assert_eq!(key_of(&ex, &req("1.2.3.4", &[])), ip("1.2.3.4/32"));
        let a = req("[2001:db8:1:2:aaaa::1]", &[]);
        let b = req("[2001:db8:1:2:bbbb::1]", &[]);
        assert_eq!(key_of(&ex, &a), key_of(&ex, &b), "same /64");
        assert_eq!(key_of(&ex, &a), ip("2001:db8:1:2::/64"));
        let mapped = req("[::ffff:1.2.3.4]", &[]);
        assert_eq!(key_of(&ex, &mapped), ip("1.2.3.4/32"));
        let none = Request::new(());
        assert_eq!(ex.extract(&RequestView::new(&none)), Err(KeyError::Missing));
    }

    #[test]
    fn peer_ip_from_a_custom_extension() {
        #[derive(Clone)]
        struct Info(SocketAddr);
        let ex = PeerIp::from_extension(|i: &Info| i.0.ip());
        let mut r = Request::new(());
        r.extensions_mut()
            .insert(Info("9.9.9.9:1".parse().unwrap()));
        assert_eq!(key_of(&ex, &r), ip("9.9.9.9/32"));
    }

    #[test]
    fn untrusted_peer_spoofing_forwarding_headers_is_ignored() {
        let ex = ClientIp::new().trust(["10.0.0.0/8".parse().unwrap()]);
        let r = req("8.8.8.8", &[("x-forwarded-for", "1.1.1.1")]);
        assert_eq!(key_of(&ex, &r), ip("8.8.8.8/32"));
        let nothing_trusted = ClientIp::new();
        let r = req("10.0.0.1", &[("x-forwarded-for", "1.1.1.1")]);
        assert_eq!(key_of(&nothing_trusted, &r), ip("10.0.0.1/32"));
    }

    #[test]
    fn xff_is_read_right_to_left_skipping_trusted_hops() {
        let ex = ClientIp::new().trust(["10.0.0.0/8".parse().unwrap()]);
        // The client forged "6.6.6.6"; the trusted proxies appended the rest.
        let r = req(
            "10.0.0.2",
            &[("x-forwarded-for", "6.6.6.6, 7.7.7.7, 10.0.0.9")],
        );
        assert_eq!(key_of(&ex, &r), ip("7.7.7.7/32"));
        // Several header lines are one list, in order.
        let r = req(
            "10.0.0.2",
            &[
                ("x-forwarded-for", "6.6.6.6"),
                ("x-forwarded-for", "7.7.7.7:5555"),
            ],
        );
        assert_eq!(key_of(&ex, &r), ip("7.7.7.7/32"));
    }

    #[test]
    fn forwarded_header_with_ports_quotes_and_ipv6() {
        let ex = ClientIp::new()
            .trust(["10.0.0.0/8".parse().unwrap()])
            .header(ForwardingHeader::Forwarded);
        let r = req(
            "10.0.0.2",
            &[(
                "forwarded",
                "for=6.6.6.6, for=\"[2001:db8::7]:443\";proto=https, for=10.1.1.1",
            )],
        );
        assert_eq!(key_of(&ex, &r), ip("2001:db8::/64"));
        // X-Forwarded-For is not read when Forwarded is configured.
        let r = req("10.0.0.2", &[("x-forwarded-for", "7.7.7.7")]);
        assert_eq!(key_of(&ex, &r), ip("10.0.0.2/32"));
    }

    #[test]
    fn hundred_hop_xff_reads_at_most_max_hops() {
        let ex = ClientIp::new().trust(["10.0.0.0/8".parse().unwrap()]);
        let hops: Vec<String> = (0..100)
            .map(|i| format!("10.0.{}.{}", i / 250, i % 250))
            .collect();
        let r = req("10.0.0.2", &[("x-forwarded-for", &hops.join(", "))]);
        // 20 hops read from the right: hops[99] .. hops[80]; the 20th is used.
        assert_eq!(key_of(&ex, &r), ip(&format!("{}/32", hops[80])));
        let forged: Vec<&str> = std::iter::repeat_n("1.1.1.1", 99)
            .chain(["5.5.5.5"])
            .collect();
        let r = req("10.0.0.2", &[("x-forwarded-for", &forged.join(","))]);
        assert_eq!(key_of(&ex, &r), ip("5.5.5.5/32"));
    }

    #[test]
    fn unparseable_and_non_utf8_hops_key_on_the_reporting_proxy() {
        let ex = ClientIp::new().trust(["10.0.0.0/8".parse().unwrap()]);
        let r = req("10.0.0.2", &[("x-forwarded-for", "unknown, 10.0.0.3")]);
        let k = key_of(&ex, &r);
        assert_eq!(k, ClientKey::new("ip-hidden-behind", "10.0.0.3"));
        let mut r = req("10.0.0.2", &[]);
        r.headers_mut().insert(
            "x-forwarded-for",
            http::HeaderValue::from_bytes(b"1.2.3.4\xff").unwrap(),
        );
        assert_eq!(
            key_of(&ex, &r),
            ClientKey::new("ip-hidden-behind", "10.0.0.2")
        );
    }
}
