//! Which IP a connection counts against: the socket's, or the one a trusted proxy names.
//!
//! Behind a load balancer every socket comes from the balancer, so per-IP
//! limits would lump all clients together. A proxy listed in
//! `--trusted-proxy` may name the real client, in an `X-Forwarded-For` header
//! or a PROXY protocol (v1 text or v2 binary) header ahead of the stream. From
//! any other peer both are ignored: a client cannot pick its own address.

use std::io;
use std::net::IpAddr;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The longest PROXY v1 line (the specification's bound).
const V1_MAX: usize = 107;
/// The v2 signature.
const V2_SIG: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The largest v2 address block accepted (addresses plus TLVs).
const V2_MAX_LEN: usize = 1024;

/// Reads a PROXY protocol header (v1 or v2) from the start of `stream`, consuming exactly its bytes.
///
/// This function only frames the header (where it ends, within the specification's bounds); the
/// `ppp` crate parses it. Returns the source address it names, or `None` for `UNKNOWN`/`LOCAL`
/// headers (health checks from the proxy itself), in which case the socket address counts.
///
/// # Errors
/// `InvalidData` when the stream does not start with a well-formed header.
pub async fn read_proxy_header<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<Option<IpAddr>> {
    let mut head = [0u8; 16];
    stream.read_exact(&mut head[..12]).await?;
    if head[..12] == V2_SIG {
        stream.read_exact(&mut head[12..]).await?;
        let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
        if len > V2_MAX_LEN {
            return Err(bad("PROXY v2 header too long"));
        }
        let mut header = head.to_vec();
        header.resize(16 + len, 0);
        stream.read_exact(&mut header[16..]).await?;
        return source_v2(&header);
    }
    if !head.starts_with(b"PROXY ") {
        return Err(bad("no PROXY protocol header"));
    }
    let mut line = head[..12].to_vec();
    while !line.ends_with(b"\r\n") {
        if line.len() >= V1_MAX {
            return Err(bad("PROXY v1 line too long"));
        }
        let mut b = [0u8; 1];
        stream.read_exact(&mut b).await?;
        line.push(b[0]);
    }
    source_v1(&line)
}

/// The source of a whole v1 line, `\r\n` included.
fn source_v1(line: &[u8]) -> io::Result<Option<IpAddr>> {
    use ppp::v1::{Addresses, Header};
    match Header::try_from(line).map_err(|_| bad("malformed PROXY v1 header"))?.addresses {
        Addresses::Unknown => Ok(None),
        Addresses::Tcp4(a) => Ok(Some(IpAddr::V4(a.source_address))),
        Addresses::Tcp6(a) => Ok(Some(IpAddr::V6(a.source_address))),
    }
}

/// The source of a whole v2 header.
fn source_v2(header: &[u8]) -> io::Result<Option<IpAddr>> {
    use ppp::v2::{Addresses, Command, Header};
    let header = Header::try_from(header).map_err(|_| bad("malformed PROXY v2 header"))?;
    if header.command == Command::Local {
        return Ok(None); // the proxy speaking for itself
    }
    match header.addresses {
        Addresses::IPv4(a) => Ok(Some(IpAddr::V4(a.source_address))),
        Addresses::IPv6(a) => Ok(Some(IpAddr::V6(a.source_address))),
        Addresses::Unspecified | Addresses::Unix(_) => Ok(None),
    }
}

fn bad(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// The client named by `X-Forwarded-For` values (in header order), given a trusted immediate peer.
///
/// Walks the chain from the right, skipping trusted proxies; the first address
/// that is not one is the client. An unparsable entry stops the walk (what lies
/// left of it cannot be trusted), as does running out of entries.
pub fn from_forwarded_for<'a>(
    values: impl Iterator<Item = &'a str>,
    peer: IpAddr,
    trusted: impl Fn(IpAddr) -> bool,
) -> IpAddr {
    let hops: Vec<&str> = values.flat_map(|v| v.split(',')).map(str::trim).filter(|s| !s.is_empty()).collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Some(ip) = parse_hop(hop) else { break };
        client = ip;
        if !trusted(ip) {
            break;
        }
    }
    client
}

/// An XFF entry: `1.2.3.4`, `1.2.3.4:5678`, `::1` or `[::1]:5678`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse() {
        return Some(ip);
    }
    if let Ok(sa) = hop.parse::<std::net::SocketAddr>() {
        return Some(sa.ip());
    }
    hop.strip_prefix('[').and_then(|h| h.strip_suffix(']')).and_then(|h| h.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }

    #[test]
    fn forwarded_for_takes_the_rightmost_untrusted_hop() {
        let trusted = |a: IpAddr| a.is_loopback() || a == ip("10.0.0.2");
        let peer = ip("127.0.0.1");
        assert_eq!(from_forwarded_for(["6.6.6.6, 1.2.3.4, 10.0.0.2"].into_iter(), peer, trusted), ip("1.2.3.4"));
        assert_eq!(from_forwarded_for(["6.6.6.6", "1.2.3.4:99"].into_iter(), peer, trusted), ip("1.2.3.4"));
        assert_eq!(from_forwarded_for(["garbage, 10.0.0.2"].into_iter(), peer, trusted), ip("10.0.0.2"));
        assert_eq!(from_forwarded_for(std::iter::empty(), peer, trusted), peer);
        assert_eq!(from_forwarded_for(["[2001:db8::1]:443"].into_iter(), peer, trusted), ip("2001:db8::1"));
    }

    #[tokio::test]
    async fn proxy_headers() {
        let mut v1: &[u8] = b"PROXY TCP4 192.0.2.7 198.51.100.1 5555 443\r\nGET /";
        assert_eq!(read_proxy_header(&mut v1).await.ok(), Some(Some(ip("192.0.2.7"))));
        assert_eq!(v1, b"GET /", "exactly the header is consumed");
        let mut unknown: &[u8] = b"PROXY UNKNOWN\r\n";
        assert_eq!(read_proxy_header(&mut unknown).await.ok(), Some(None));
        let mut v2 = V2_SIG.to_vec();
        v2.extend_from_slice(&[0x21, 0x11, 0, 12, 203, 0, 113, 9, 10, 0, 0, 1, 0x15, 0xb3, 0x01, 0xbb]);
        v2.extend_from_slice(b"rest");
        let mut r: &[u8] = &v2;
        assert_eq!(read_proxy_header(&mut r).await.ok(), Some(Some(ip("203.0.113.9"))));
        assert_eq!(r, b"rest");
        for junk in [&b"GET / HTTP/1.1\r\n\r\n"[..], b"PROXY TCP4 nope 1.1.1.1 1 2\r\n", &[b'P'; 200][..]] {
            let mut r = junk;
            assert!(read_proxy_header(&mut r).await.is_err());
        }
    }

    /// Runs the async header reader on `bytes`; returns its result and what it left unread.
    fn read(bytes: &[u8]) -> (Option<Option<IpAddr>>, Vec<u8>) {
        let rt = tokio::runtime::Builder::new_current_thread().build();
        let Ok(rt) = rt else { return (None, Vec::new()) };
        let mut r = bytes;
        let got = rt.block_on(read_proxy_header(&mut r)).ok();
        (got, r.to_vec())
    }

    fn v2_header(src: IpAddr, port: u16) -> Vec<u8> {
        let mut h = V2_SIG.to_vec();
        match src {
            IpAddr::V4(a) => {
                h.extend_from_slice(&[0x21, 0x11, 0, 12]);
                h.extend_from_slice(&a.octets());
                h.extend_from_slice(&[127, 0, 0, 1]);
            }
            IpAddr::V6(a) => {
                h.extend_from_slice(&[0x21, 0x21, 0, 36]);
                h.extend_from_slice(&a.octets());
                h.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
            }
        }
        h.extend_from_slice(&port.to_be_bytes());
        h.extend_from_slice(&443u16.to_be_bytes());
        h
    }

    proptest::proptest! {
        /// Whatever a peer sends first, the reader answers (a header or an error) and never panics.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::arbitrary::any::<u8>(), 0..300)) {
            let _ = read(&bytes);
            let mut after_sig = V2_SIG.to_vec();
            after_sig.extend_from_slice(&bytes);
            let _ = read(&after_sig);
            let mut v1 = b"PROXY ".to_vec();
            v1.extend_from_slice(&bytes);
            let _ = read(&v1);
        }

        /// A header written for any address reads back as that address, consuming exactly itself.
        #[test]
        fn headers_round_trip(src in proptest::arbitrary::any::<IpAddr>(), port in proptest::arbitrary::any::<u16>(),
                              rest in proptest::collection::vec(proptest::arbitrary::any::<u8>(), 0..16)) {
            let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
            let dst = if src.is_ipv4() { "127.0.0.1" } else { "::1" };
            let mut v1 = format!("PROXY {family} {src} {dst} {port} 443\r\n").into_bytes();
            v1.extend_from_slice(&rest);
            proptest::prop_assert_eq!(read(&v1), (Some(Some(src)), rest.clone()));
            let mut v2 = v2_header(src, port);
            v2.extend_from_slice(&rest);
            proptest::prop_assert_eq!(read(&v2), (Some(Some(src)), rest));
        }

        /// X-Forwarded-For never panics, and names the rightmost hop that is not a trusted proxy
        /// (the leftmost hop when all are trusted; the peer when there is none).
        #[test]
        fn forwarded_for_names_the_rightmost_untrusted_hop(
            hops in proptest::collection::vec(proptest::arbitrary::any::<IpAddr>(), 0..6),
            junk in ".{0,40}",
        ) {
            let trusted = |a: IpAddr| a.is_loopback();
            let peer = ip("127.0.0.1");
            let _ = from_forwarded_for([junk.as_str()].into_iter(), peer, trusted);
            let header = hops.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
            let want = hops.iter().rev().find(|h| !trusted(**h)).or(hops.first()).copied().unwrap_or(peer);
            proptest::prop_assert_eq!(from_forwarded_for([header.as_str()].into_iter(), peer, trusted), want);
        }
    }
}
