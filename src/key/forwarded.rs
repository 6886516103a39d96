//! Keys from the client address behind trusted proxies: `X-Forwarded-For`
//! or `Forwarded`, read from the right.

use std::net::{IpAddr, SocketAddr};

use http::header::{HeaderName, FORWARDED};
use ipnet::IpNet;

use super::ip::{canonical, PeerIp};
use super::{ClientKey, KeyError, KeyExtractor, RequestView};

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

    fn describe(&self) -> String {
        format!(
            "the client address in {} behind trusted proxies, from {}",
            match self.header {
                ForwardingHeader::XForwardedFor => "X-Forwarded-For",
                ForwardingHeader::Forwarded => "Forwarded",
            },
            self.peer.describe()
        )
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
