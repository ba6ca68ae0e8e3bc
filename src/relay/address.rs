//! Which addresses an attachment download may connect to: globally routable unicast only.
//! Pure — the fetcher asks it for every address a name resolves to and every redirect; tests
//! ask it about literals and never connect anywhere.
//!
//! The blocks are IANA's special-purpose address registries (iana-ipv4-special-registry,
//! iana-ipv6-special-registry) plus multicast and, for IPv6, everything outside global
//! unicast (2000::/3). Every special-purpose block is refused, even the few the registry marks
//! globally reachable (anycast services such as AS112 or PCP): no attachment is served from
//! them. Addresses that embed an IPv4 address (IPv4-mapped, 6to4, Teredo, NAT64) are judged by
//! the IPv4 address they lead to.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// IPv4 blocks refused: `(network, prefix length, name)`.
const V4_BLOCKS: &[(u32, u8, &str)] = &[
    (0x0000_0000, 8, "\"this network\" (0.0.0.0/8)"),
    (0x0a00_0000, 8, "private-use (10.0.0.0/8)"),
    (0x6440_0000, 10, "shared address space (100.64.0.0/10)"),
    (0x7f00_0000, 8, "loopback (127.0.0.0/8)"),
    (0xa9fe_0000, 16, "link-local (169.254.0.0/16)"),
    (0xac10_0000, 12, "private-use (172.16.0.0/12)"),
    (0xc000_0000, 24, "IETF protocol assignments (192.0.0.0/24)"),
    (0xc000_0200, 24, "documentation (192.0.2.0/24)"),
    (0xc01f_c400, 24, "AS112-v4 (192.31.196.0/24)"),
    (0xc034_c100, 24, "AMT (192.52.193.0/24)"),
    (0xc058_6300, 24, "6to4 relay anycast (192.88.99.0/24)"),
    (0xc0a8_0000, 16, "private-use (192.168.0.0/16)"),
    (0xc0af_3000, 24, "direct delegation AS112 (192.175.48.0/24)"),
    (0xc612_0000, 15, "benchmarking (198.18.0.0/15)"),
    (0xc633_6400, 24, "documentation (198.51.100.0/24)"),
    (0xcb00_7100, 24, "documentation (203.0.113.0/24)"),
    (0xe000_0000, 4, "multicast (224.0.0.0/4)"),
    (0xf000_0000, 4, "reserved (240.0.0.0/4)"),
    (0xffff_ffff, 32, "limited broadcast (255.255.255.255/32)"),
];

/// IPv6 blocks refused inside global unicast (2000::/3), checked after the embedding forms.
const V6_BLOCKS: &[(u128, u8, &str)] = &[
    (0x2001_0000 << 96, 23, "IETF protocol assignments (2001::/23)"),
    (0x2001_0db8 << 96, 32, "documentation (2001:db8::/32)"),
    (
        0x2620_004f_8000 << 80,
        48,
        "direct delegation AS112 (2620:4f:8000::/48)",
    ),
    (0x3fff << 112, 20, "documentation (3fff::/20)"),
];

/// Why `ip` must not be connected to, or `None` when it is a globally routable unicast address.
pub fn refusal(ip: IpAddr) -> Option<String> {
    match ip {
        IpAddr::V4(v4) => refusal_v4(v4).map(str::to_owned),
        IpAddr::V6(v6) => refusal_v6(v6),
    }
}

fn refusal_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let bits = u32::from(ip);
    V4_BLOCKS
        .iter()
        .find(|(network, len, _)| bits >> (32 - u32::from(*len)) == network >> (32 - u32::from(*len)))
        .map(|(_, _, name)| *name)
}

fn refusal_v6(ip: Ipv6Addr) -> Option<String> {
    let bits = u128::from(ip);
    let within = |network: u128, len: u8| bits >> (128 - u32::from(len)) == network >> (128 - u32::from(len));
    let embedded =
        |form: &str, v4: u32| refusal_v4(Ipv4Addr::from(v4)).map(|why| format!("{form} of an address in {why}"));
    if within(0xffff << 32, 96) {
        return embedded("IPv4-mapped (::ffff:0:0/96)", bits as u32);
    }
    if within(0x0064_ff9b << 96, 96) {
        return embedded("NAT64 (64:ff9b::/96)", bits as u32);
    }
    if within(0x2002 << 112, 16) {
        return embedded("6to4 (2002::/16)", (bits >> 80) as u32);
    }
    if within(0x2001_0000 << 96, 32) {
        // Teredo: the server's IPv4 in bits 32–63, the client's (inverted) in the last 32.
        return embedded("Teredo (2001::/32)", (bits >> 64) as u32)
            .or_else(|| embedded("Teredo (2001::/32)", !(bits as u32)));
    }
    if within(0x0064_ff9b_0001 << 80, 48) {
        return Some("local-use IPv4/IPv6 translation (64:ff9b:1::/48)".into());
    }
    if !within(0x2000 << 112, 3) {
        return Some(match bits {
            0 => "unspecified (::)".into(),
            1 => "loopback (::1)".into(),
            _ if within(0xfc00 << 112, 7) => "unique-local (fc00::/7)".into(),
            _ if within(0xfe80 << 112, 10) => "link-local (fe80::/10)".into(),
            _ if within(0xff00 << 112, 8) => "multicast (ff00::/8)".into(),
            _ => "outside global unicast (2000::/3)".into(),
        });
    }
    V6_BLOCKS
        .iter()
        .find(|(network, len, _)| within(*network, *len))
        .map(|(_, _, name)| (*name).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every block, by its first, a middle or its last address.
    const REFUSED: &[&str] = &[
        "0.0.0.0",
        "0.255.255.255",
        "10.0.0.1",
        "10.255.255.255",
        "100.64.0.1",
        "100.127.255.255",
        "127.0.0.1",
        "127.255.255.254",
        "169.254.169.254",
        "172.16.0.1",
        "172.31.255.255",
        "192.0.0.8",
        "192.0.0.170",
        "192.0.2.1",
        "192.31.196.1",
        "192.52.193.1",
        "192.88.99.1",
        "192.168.1.1",
        "192.175.48.1",
        "198.18.0.1",
        "198.19.255.255",
        "198.51.100.1",
        "203.0.113.1",
        "224.0.0.1",
        "239.255.255.250",
        "240.0.0.1",
        "254.255.255.255",
        "255.255.255.255",
        "::",
        "::1",
        "::ffff:10.0.0.1",
        "::ffff:127.0.0.1",
        "::ffff:198.18.0.1",
        "::127.0.0.1",
        "::ffff:0:10.0.0.1",
        "64:ff9b::a00:1",
        "64:ff9b::192.168.0.1",
        "64:ff9b:1::1",
        "64:ff9b:1:ffff::8.8.8.8",
        "100::1",
        "100:0:0:1::1",
        "2001::1",
        "2001:0:a00:1::1",
        "2001:0:808:808::f5ff:fffe",
        "2001:1::1",
        "2001:2::1",
        "2001:3::1",
        "2001:4:112::1",
        "2001:10::1",
        "2001:20::1",
        "2001:30::1",
        "2001:1ff:ffff::1",
        "2001:db8::1",
        "2002:a00:1::1",
        "2002:7f00:1::1",
        "2002:c0a8:101::1",
        "2620:4f:8000::1",
        "3fff::1",
        "3fff:fff::1",
        "5f00::1",
        "fc00::1",
        "fd12:3456::1",
        "fe80::1",
        "febf::1",
        "fec0::1",
        "ff02::1",
        "ff0e::1",
    ];

    const ALLOWED: &[&str] = &[
        "1.1.1.1",
        "8.8.8.8",
        "100.63.255.255",
        "100.128.0.1",
        "172.15.255.255",
        "172.32.0.1",
        "192.0.1.1",
        "192.169.0.1",
        "198.17.255.255",
        "198.20.0.1",
        "223.255.255.255",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",
        "2002:808:808::1",
        "2001:0:808:808::f7f7:f7f7",
        "2001:200::1",
        "2606:4700::1111",
        "2a00:1450:4001::200e",
    ];

    #[test]
    fn every_special_purpose_block_is_refused_with_its_name() {
        for literal in REFUSED {
            let ip: IpAddr = literal.parse().unwrap();
            assert!(refusal(ip).is_some(), "{literal} allowed");
        }
        assert_eq!(
            refusal("198.18.0.1".parse().unwrap()).unwrap(),
            "benchmarking (198.18.0.0/15)"
        );
        assert_eq!(
            refusal("2002:c0a8:101::1".parse().unwrap()).unwrap(),
            "6to4 (2002::/16) of an address in private-use (192.168.0.0/16)"
        );
    }

    #[test]
    fn globally_routable_unicast_is_allowed_also_when_embedded() {
        for literal in ALLOWED {
            let ip: IpAddr = literal.parse().unwrap();
            assert_eq!(refusal(ip), None, "{literal}");
        }
    }
}
