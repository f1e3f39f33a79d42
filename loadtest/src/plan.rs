//! How a run is split over processes: each gets a share of the connections and source
//! addresses of its own.

use crate::opts::SourceIps;
use std::net::Ipv4Addr;

/// One process's part of the run.
#[derive(Debug, Clone, PartialEq)]
pub struct Share {
    pub connections: u64,
    /// Round-robin source addresses; empty lets the kernel choose.
    pub source_ips: Vec<Ipv4Addr>,
    /// The run-wide index of its first connection: where it starts in the round-robin
    /// over the target URLs (`CommonArgs::worker_args`).
    pub first: u64,
}

/// Splits `connections` into `processes` nearly equal shares and gives each its own
/// source addresses, so two processes never compete for the same ports.
pub fn plan(
    connections: u64,
    processes: u64,
    given_ips: Option<&SourceIps>,
    default_ips: bool,
    per_ip: u64,
) -> Result<Vec<Share>, String> {
    let mut shares = Vec::new();
    let mut next_block = 0usize;
    let mut first = 0;
    for i in 0..processes {
        let share = connections / processes + u64::from(i < connections % processes);
        let source_ips = match given_ips {
            Some(SourceIps(ips)) if ips.len() as u64 >= processes => {
                // Contiguous slices, the first ones one address longer if uneven.
                let (len, p, i) = (ips.len() as u64, processes, i);
                let start = i * (len / p) + i.min(len % p);
                let size = len / p + u64::from(i < len % p);
                ips[start as usize..(start + size) as usize].to_vec()
            }
            // Fewer addresses than processes: they have to share.
            Some(SourceIps(ips)) => vec![ips[i as usize % ips.len()]],
            None if default_ips => {
                let count = share.div_ceil(per_ip).max(1) as usize;
                let block = SourceIps::loopback_block(next_block, count)?;
                next_block += count;
                block.0
            }
            None => Vec::new(),
        };
        shares.push(Share { connections: share, source_ips, first });
        first += share;
    }
    Ok(shares)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_plan_gives_each_process_its_own_addresses() {
        let shares = plan(45_000, 2, None, true, 20_000).unwrap();
        assert_eq!(shares[0].connections, 22_500);
        assert_eq!(shares[1].connections, 22_500);
        assert_eq!((shares[0].first, shares[1].first), (0, 22_500));
        let ip = |d| Ipv4Addr::new(127, 0, 0, d);
        assert_eq!(shares[0].source_ips, vec![ip(2), ip(3)]);
        assert_eq!(shares[1].source_ips, vec![ip(4), ip(5)]);
        assert!(plan(10, 1, None, false, 20_000).unwrap()[0].source_ips.is_empty());
    }

    #[test]
    fn given_addresses_are_split_or_shared() {
        let ips = crate::opts::parse_source_ips("127.0.0.2-127.0.0.6").unwrap();
        let shares = plan(7, 2, Some(&ips), true, 20_000).unwrap();
        assert_eq!((shares[0].connections, shares[1].connections), (4, 3));
        assert_eq!(shares[0].source_ips.len(), 3);
        assert_eq!(shares[1].source_ips.len(), 2);
        assert_eq!(shares[1].source_ips[0], Ipv4Addr::new(127, 0, 0, 5));
        let one = crate::opts::parse_source_ips("127.0.0.9").unwrap();
        let shares = plan(7, 3, Some(&one), true, 20_000).unwrap();
        assert!(shares.iter().all(|s| s.source_ips == one.0));
    }
}
