//! Private subnets for Docker bridge networks (the lab's, the image builds'): a /24
//! in 172.28.0.0/16 chosen from a name, skipping what this machine already uses.

use std::net::Ipv4Addr;

use ipnet::{IpNet, Ipv4Net};
use sha2::{Digest, Sha256};

use crate::error::Failure;

/// The /16 the subnets are taken from.
const BASE: [u8; 2] = [172, 28];

fn subnet_at(third: u8) -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(BASE[0], BASE[1], third, 0), 24).expect("/24")
}

/// The /24 a lab prefers: 172.28.X.0/24, X from a hash of its name (stable across runs).
pub fn preferred_subnet(name: &str) -> Ipv4Net {
    subnet_at(Sha256::digest(name.as_bytes())[0])
}

fn overlaps(a: IpNet, b: IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Pick the lab's subnet: its preferred /24 unless that overlaps a network or route
/// already in use (`taken`: what, prefix), else the next free /24 in 172.28.0.0/16.
/// Returns the subnet and, when the preferred one was taken, a note saying why.
pub fn choose_subnet(
    name: &str,
    taken: &[(String, IpNet)],
) -> Result<(Ipv4Net, Option<String>), String> {
    let preferred = preferred_subnet(name);
    let conflict = |net: Ipv4Net| {
        taken
            .iter()
            .find(|(_, t)| overlaps(IpNet::V4(net), *t))
            .map(|(what, t)| format!("{what} ({t})"))
    };
    let Some(first) = conflict(preferred) else {
        return Ok((preferred, None));
    };
    let start = preferred.network().octets()[2];
    for i in 1..=255u8 {
        let net = subnet_at(start.wrapping_add(i));
        if conflict(net).is_none() {
            return Ok((
                net,
                Some(format!(
                    "lab {name}: its usual subnet {preferred} overlaps {first}; using {net} instead"
                )),
            ));
        }
    }
    Err(format!(
        "lab {name}: no free /24 in 172.28.0.0/16 for the lab network: {preferred} overlaps {first}, \
         and every other /24 there overlaps an existing Docker network or route \
         (see `docker network ls` and `ip route`)"
    ))
}

/// IPv4 routes of this machine from /proc/net/route (interface, prefix), without
/// default routes.
pub fn parse_proc_routes(text: &str) -> Vec<(String, IpNet)> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            continue;
        }
        let (Ok(dest), Ok(mask)) = (u32::from_str_radix(f[1], 16), u32::from_str_radix(f[7], 16))
        else {
            continue;
        };
        // The kernel prints these in host (little-endian) byte order.
        let dest = Ipv4Addr::from(u32::from_be(dest.to_le()));
        let mask = Ipv4Addr::from(u32::from_be(mask.to_le()));
        let prefix = u32::from(mask).leading_ones() as u8;
        if prefix == 0 {
            continue;
        }
        if let Ok(net) = Ipv4Net::new(dest, prefix) {
            out.push((f[0].to_string(), IpNet::V4(net.trunc())));
        }
    }
    out
}

/// Prefixes in use on this machine: Docker networks' subnets and IPv4 routes.
pub async fn taken_subnets() -> Result<Vec<(String, IpNet)>, Failure> {
    let ids = super::lines(&super::run(&["network", "ls", "-q", "--no-trunc"]).await?);
    let mut taken = Vec::new();
    for v in super::inspect_many("network", &ids).await? {
        let net_name = v["Name"].as_str().unwrap_or("?").to_string();
        for c in v["IPAM"]["Config"].as_array().into_iter().flatten() {
            if let Some(Ok(s)) = c["Subnet"].as_str().map(str::parse::<IpNet>) {
                taken.push((format!("Docker network {net_name}"), s));
            }
        }
    }
    if let Ok(text) = std::fs::read_to_string("/proc/net/route") {
        for (iface, net) in parse_proc_routes(&text) {
            taken.push((format!("a route via {iface}"), net));
        }
    }
    Ok(taken)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn subnets_are_deterministic_and_avoid_overlaps() {
        let p = preferred_subnet("pgha-lab");
        assert_eq!(p, preferred_subnet("pgha-lab"));
        assert_eq!(p.prefix_len(), 24);
        assert_eq!(&p.network().octets()[..2], &[172, 28]);
        assert_eq!(choose_subnet("pgha-lab", &[]).unwrap(), (p, None));

        let taken = vec![("network other".to_string(), IpNet::V4(p))];
        let (s, note) = choose_subnet("pgha-lab", &taken).unwrap();
        assert_ne!(s, p);
        let note = note.unwrap();
        assert!(
            note.contains(&p.to_string()) && note.contains("network other"),
            "{note}"
        );

        // A wide route over the whole range leaves nothing.
        let e = choose_subnet(
            "pgha-lab",
            &[("route via tun0".into(), net("172.28.0.0/16"))],
        )
        .unwrap_err();
        assert!(e.contains("route via tun0"), "{e}");
        // Unrelated networks do not matter.
        assert_eq!(
            choose_subnet("pgha-lab", &[("x".into(), net("172.31.240.0/24"))]).unwrap(),
            (p, None)
        );
    }

    #[test]
    fn the_labs_our_tests_run_side_by_side_prefer_different_subnets() {
        let names = ["pgha-lab", "pgha-t-lab", "pgha-e2e", "pgha-e2e-user"];
        let mut seen = std::collections::BTreeSet::new();
        for n in names {
            assert!(seen.insert(preferred_subnet(n)), "{n} collides");
        }
    }

    #[test]
    fn proc_routes() {
        let text = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
eth0\t00000000\t0100A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
eth0\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
br-1\t00001CAC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n";
        assert_eq!(
            parse_proc_routes(text),
            vec![
                ("eth0".to_string(), net("192.168.0.0/24")),
                ("br-1".to_string(), net("172.28.0.0/16")),
            ]
        );
    }
}
