//! The address rules every outgoing request obeys (SSRF guard): which URLs may be fetched
//! and which addresses may be connected to.
//!
//! Only `http` and `https`, no credentials in the URL, and no address in a loopback,
//! private, link-local, shared (CGNAT), multicast, unspecified, documentation,
//! benchmarking or reserved range, in IPv4 or IPv6, including IPv4 addresses carried in
//! IPv6 ones (mapped, compatible, NAT64, 6to4). URLs are parsed as browsers parse them, so
//! decimal, octal, hex and short spellings of an IPv4 address (`2130706433`, `0177.0.0.1`,
//! `0x7f.1`, `127.1`) are checked as the address they mean.
//!
//! An allow-list of host names and networks is exempt, for development and tests only.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use url::{Host, Url};

use super::FetchError;

/// Why an address is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Unspecified,
    Loopback,
    Private,
    LinkLocal,
    Shared,
    Multicast,
    Documentation,
    Benchmarking,
    Reserved,
    UniqueLocal,
    Translation,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Unspecified => "unspecified",
            Refusal::Loopback => "loopback",
            Refusal::Private => "private",
            Refusal::LinkLocal => "link-local",
            Refusal::Shared => "shared (CGNAT)",
            Refusal::Multicast => "multicast",
            Refusal::Documentation => "documentation",
            Refusal::Benchmarking => "benchmarking",
            Refusal::Reserved => "reserved",
            Refusal::UniqueLocal => "unique-local",
            Refusal::Translation => "translation (Teredo, NAT64 local use)",
        }
    }
}

const V4_RULES: &[(&str, Refusal)] = &[
    ("0.0.0.0/8", Refusal::Unspecified),
    ("10.0.0.0/8", Refusal::Private),
    ("100.64.0.0/10", Refusal::Shared),
    ("127.0.0.0/8", Refusal::Loopback),
    ("169.254.0.0/16", Refusal::LinkLocal),
    ("172.16.0.0/12", Refusal::Private),
    ("192.0.0.0/24", Refusal::Reserved),
    ("192.0.2.0/24", Refusal::Documentation),
    ("192.88.99.0/24", Refusal::Reserved),
    ("192.168.0.0/16", Refusal::Private),
    ("198.18.0.0/15", Refusal::Benchmarking),
    ("198.51.100.0/24", Refusal::Documentation),
    ("203.0.113.0/24", Refusal::Documentation),
    ("224.0.0.0/4", Refusal::Multicast),
    ("240.0.0.0/4", Refusal::Reserved),
];

const V6_RULES: &[(&str, Refusal)] = &[
    ("64:ff9b:1::/48", Refusal::Translation),
    ("100::/64", Refusal::Reserved),
    ("2001::/32", Refusal::Translation),
    ("2001::/23", Refusal::Reserved),
    ("2001:db8::/32", Refusal::Documentation),
    ("3fff::/20", Refusal::Documentation),
    ("fc00::/7", Refusal::UniqueLocal),
    ("fe80::/10", Refusal::LinkLocal),
    ("fec0::/10", Refusal::LinkLocal),
    ("ff00::/8", Refusal::Multicast),
];

/// Why `ip` must not be connected to, or `None` when it is a public address.
pub fn refusal(ip: IpAddr) -> Option<Refusal> {
    match ip {
        IpAddr::V4(v4) => refusal_v4(v4),
        IpAddr::V6(v6) => refusal_v6(v6),
    }
}

fn refusal_v4(ip: Ipv4Addr) -> Option<Refusal> {
    V4_RULES.iter().find_map(|(net, why)| {
        net.parse::<Ipv4Net>()
            .ok()
            .filter(|n| n.contains(&ip))
            .map(|_| *why)
    })
}

fn refusal_v6(ip: Ipv6Addr) -> Option<Refusal> {
    if ip.is_unspecified() {
        return Some(Refusal::Unspecified);
    }
    if ip.is_loopback() {
        return Some(Refusal::Loopback);
    }
    let s = ip.segments();
    // IPv4 carried inside IPv6: mapped (::ffff:a.b.c.d), compatible (::a.b.c.d), NAT64
    // (64:ff9b::a.b.c.d) and 6to4 (2002:aabb:ccdd::): judged as the IPv4 address; the
    // compatible form is deprecated and refused outright.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return refusal_v4(v4);
    }
    if s[..6] == [0; 6] {
        return Some(Refusal::Reserved);
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let v4 = Ipv4Addr::from((u32::from(s[6]) << 16) | u32::from(s[7]));
        return refusal_v4(v4);
    }
    if s[0] == 0x2002 {
        let v4 = Ipv4Addr::from((u32::from(s[1]) << 16) | u32::from(s[2]));
        return refusal_v4(v4);
    }
    V6_RULES.iter().find_map(|(net, why)| {
        net.parse::<Ipv6Net>()
            .ok()
            .filter(|n| n.contains(&ip))
            .map(|_| *why)
    })
}

/// The rules as configured: the fixed refusals, less the allow-list.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    hosts: Vec<String>,
    nets: Vec<IpNet>,
}

impl Rules {
    /// Rules with an allow-list of host names (exact, any case) and networks (`a.b.c.d/n`,
    /// or a bare address). Meant for development and tests.
    pub fn new(allow: &[String]) -> Result<Self, String> {
        let mut rules = Rules::default();
        for entry in allow {
            let entry = entry.trim();
            if let Ok(net) = entry.parse::<IpNet>() {
                rules.nets.push(net);
            } else if let Ok(ip) = entry.parse::<IpAddr>() {
                rules.nets.push(IpNet::from(ip));
            } else if !entry.is_empty()
                && entry
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            {
                rules.hosts.push(entry.to_ascii_lowercase());
            } else {
                return Err(format!(
                    "fetch.allow: {entry:?} is neither a host name nor an address or network"
                ));
            }
        }
        Ok(rules)
    }

    fn host_allowed(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.');
        self.hosts.iter().any(|h| h.eq_ignore_ascii_case(host))
    }

    /// Checks an address `host` resolved to (or is).
    pub fn check_addr(&self, host: &str, ip: IpAddr) -> Result<(), FetchError> {
        if self.host_allowed(host) || self.nets.iter().any(|n| n.contains(&ip)) {
            return Ok(());
        }
        match refusal(ip) {
            None => Ok(()),
            Some(why) => Err(FetchError::Refused {
                host: host.to_owned(),
                addr: ip,
                reason: why.as_str(),
            }),
        }
    }

    /// Checks what can be checked without a name lookup: the scheme, credentials, and the
    /// address when the host is one. Returns the parsed URL.
    pub fn check_url(&self, raw: &str) -> Result<Url, FetchError> {
        let url = Url::parse(raw).map_err(|e| FetchError::BadUrl(e.to_string()))?;
        self.check_parsed(&url)?;
        Ok(url)
    }

    pub fn check_parsed(&self, url: &Url) -> Result<(), FetchError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(FetchError::Scheme(url.scheme().to_owned()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(FetchError::Credentials);
        }
        match url.host() {
            None => Err(FetchError::BadUrl("no host".into())),
            Some(Host::Ipv4(ip)) => self.check_addr(&ip.to_string(), IpAddr::V4(ip)),
            Some(Host::Ipv6(ip)) => self.check_addr(&ip.to_string(), IpAddr::V6(ip)),
            Some(Host::Domain(_)) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(ip: &str) -> Option<Refusal> {
        refusal(ip.parse().expect("address"))
    }

    #[test]
    fn public_addresses_pass() {
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.216.34",
            "2606:4700::1111",
            "2a00:1450:4001::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:0808:0808::1",
        ] {
            assert_eq!(refused(ip), None, "{ip}");
        }
    }

    #[test]
    fn special_addresses_are_refused() {
        for (ip, why) in [
            ("0.0.0.0", Refusal::Unspecified),
            ("127.0.0.1", Refusal::Loopback),
            ("10.1.2.3", Refusal::Private),
            ("172.31.255.255", Refusal::Private),
            ("192.168.0.1", Refusal::Private),
            ("169.254.169.254", Refusal::LinkLocal),
            ("100.100.100.200", Refusal::Shared),
            ("224.0.0.1", Refusal::Multicast),
            ("255.255.255.255", Refusal::Reserved),
            ("::", Refusal::Unspecified),
            ("::1", Refusal::Loopback),
            ("::ffff:127.0.0.1", Refusal::Loopback),
            ("::ffff:a9fe:a9fe", Refusal::LinkLocal),
            ("::127.0.0.1", Refusal::Reserved),
            ("64:ff9b::a00:1", Refusal::Private),
            ("2002:7f00:1::", Refusal::Loopback),
            ("fd00::1", Refusal::UniqueLocal),
            ("fe80::1", Refusal::LinkLocal),
            ("ff02::1", Refusal::Multicast),
            ("2001:db8::1", Refusal::Documentation),
            ("2001:0:4136:e378::1", Refusal::Translation),
        ] {
            assert_eq!(refused(ip), Some(why), "{ip}");
        }
    }

    #[test]
    fn allow_list_exempts_hosts_and_networks() {
        let rules = Rules::new(&["fixture.test".into(), "127.0.0.0/8".into()]).expect("rules");
        let lo: IpAddr = "127.0.0.1".parse().expect("ip");
        assert!(rules
            .check_addr("FIXTURE.test.", "10.0.0.1".parse().expect("ip"))
            .is_ok());
        assert!(rules.check_addr("other", lo).is_ok());
        assert!(rules
            .check_addr("other", "::1".parse().expect("ip"))
            .is_err());
        assert!(Rules::new(&["not a host!".into()]).is_err());
    }
}
