//! Keys from IP addresses: the peer, or the client behind trusted proxies.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::header::{HeaderName, FORWARDED};
use http::Extensions;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::{ClientKey, KeyError, KeyExtractor, RequestView};

/// The peer address of a connection, as a request extension. Servers set it
/// per connection (see the hyper example); [`PeerIp`] also reads a plain
/// `SocketAddr` extension and any type given to [`PeerIp::from_extension`]
/// (axum's `ConnectInfo`, tonic's `TcpConnectInfo`).
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
    /// Reads [`PeerAddr`] or a `SocketAddr` request extension.
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
        ext.get::<PeerAddr>()
            .map(|p| p.0.ip())
            .or_else(|| ext.get::<SocketAddr>().map(SocketAddr::ip))
    }

    fn key_for(&self, ip: IpAddr) -> ClientKey {
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
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`, what a dual-stack socket
/// reports) are the IPv4 client they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Which forwarding header a [`ClientIp`] reads. Only one is read, so a client
/// cannot pass a second, spoofed one through a proxy that only appends to the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardingHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (default).
    #[default]
    XForwardedFor,
    /// `Forwarded: for=client, for=proxy1` (RFC 7239).
    Forwarded,
}

/// The client's IP address behind trusted reverse proxies.
///
/// When the peer is inside one of the trusted networks, the forwarding header
/// is read right to left, skipping hops that are themselves trusted; the first
/// untrusted hop is the client. Nothing is trusted by default, so a client
/// cannot choose its own key by sending the header: an untrusted peer is keyed
/// by its own address. At most `max_hops` hops are read (default 20); when
/// all of them are trusted, the last one read is used. An unparseable hop
/// (`unknown`, an obfuscated name) counts as the client, keyed by the hop
/// that reported it, so it cannot reach any other client's bucket.
///
/// ```
/// use tower_redis_layers::key::ClientIp;
///
/// let key = ClientIp::new().trust(["10.0.0.0/8".parse().unwrap()]);
/// # drop(key);
/// ```
#[derive(Debug, Clone)]
pub struct ClientIp {
    peer: PeerIp,
    trusted: Vec<IpNet>,
    header: ForwardingHeader,
    max_hops: usize,
}

impl Default for ClientIp {
    fn default() -> Self {
        Self::new()
    }
}

impl ClientIp {
    /// Trusts no proxy until [`trust`](Self::trust) is called.
    pub fn new() -> Self {
        Self::with_peer(PeerIp::new())
    }

    /// Reads the peer address (and buckets addresses) as `peer` does.
    pub fn with_peer(peer: PeerIp) -> Self {
        Self {
            peer,
            trusted: Vec::new(),
            header: ForwardingHeader::default(),
            max_hops: 20,
        }
    }

    /// Trusts proxies inside these networks.
    pub fn trust(mut self, nets: impl IntoIterator<Item = IpNet>) -> Self {
        self.trusted.extend(nets);
        self
    }

    /// Which header the trusted proxies write (default `X-Forwarded-For`).
    pub fn header(mut self, header: ForwardingHeader) -> Self {
        self.header = header;
        self
    }

    /// How many hops are read at most (default 20).
    pub fn max_hops(mut self, max_hops: usize) -> Self {
        self.max_hops = max_hops.max(1);
        self
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    fn client(&self, req: &RequestView<'_>) -> Option<Hop> {
        let peer = self.peer.peer(req.extensions)?;
        if !self.is_trusted(peer) {
            return Some(Hop::Ip(peer));
        }
        let name: HeaderName = match self.header {
            ForwardingHeader::XForwardedFor => HeaderName::from_static("x-forwarded-for"),
            ForwardingHeader::Forwarded => FORWARDED,
        };
        let mut last = Hop::Ip(peer);
        let mut read = 0;
        // Later header lines were appended by nearer proxies: walk them in reverse.
        for line in req.headers.get_all(&name).iter().rev() {
            let Ok(line) = line.to_str() else {
                return Some(Hop::Unparseable(last.ip()));
            };
            for element in line.rsplit(',') {
                let node = match self.header {
                    ForwardingHeader::XForwardedFor => Some(element.trim()),
                    ForwardingHeader::Forwarded => forwarded_for(element),
                };
                let Some(node) = node else { continue };
                read += 1;
                match parse_node(node) {
                    Some(ip) if self.is_trusted(ip) && read < self.max_hops => last = Hop::Ip(ip),
                    Some(ip) => return Some(Hop::Ip(ip)),
                    None => return Some(Hop::Unparseable(last.ip())),
                }
            }
        }
        Some(last)
    }
}

enum Hop {
    Ip(IpAddr),
    /// The client is hidden; keyed by the trusted hop that reported it.
    Unparseable(IpAddr),
}

impl Hop {
    fn ip(&self) -> IpAddr {
        match self {
            Hop::Ip(ip) | Hop::Unparseable(ip) => *ip,
        }
    }
}

impl KeyExtractor for ClientIp {
    fn extract(&self, req: &RequestView<'_>) -> Result<ClientKey, KeyError> {
        match self.client(req).ok_or(KeyError::Missing)? {
            Hop::Ip(ip) => Ok(self.peer.key_for(ip)),
            Hop::Unparseable(reporter) => Ok(ClientKey::new(
                "ip-hidden-behind",
                canonical(reporter).to_string(),
            )),
        }
    }
}

/// The `for=` parameter of one `Forwarded` element.
fn forwarded_for(element: &str) -> Option<&str> {
    element.split(';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("for")
            .then(|| value.trim())
    })
}

/// An address as proxies write it: `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`,
/// `[2001:db8::1]:80`, optionally quoted.
fn parse_node(node: &str) -> Option<IpAddr> {
    let node = node.trim().trim_matches('"');
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = node.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    node.parse::<SocketAddr>().ok().map(|s| s.ip())
}

#[cfg(test)]
mod tests {
    use super::*;
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
