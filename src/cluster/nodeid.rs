//! This instance's node number in its cluster, the high bits of every connection id it
//! mints (see `ConnId`), claimed in Redis so no two live instances share one.
//!
//! Keys (`P` is `--cluster-prefix`): `P:nodeid:N` holds the random id of the instance
//! that has node number `N` (1 to 1023; 0 is a server without a cluster), and expires
//! after `TTL` unless renewed: a crashed instance frees its number within it.
//!
//! The shards never wait for the claim. An instance starts with a random provisional
//! number, which its shards mint ids with at once; the publisher thread claims it as soon
//! as it reaches Redis (before the bus counts as up), then renews it with every heartbeat.
//! If another instance holds it, this one takes a free number (tried from a random one
//! up); if ids were already minted under the old number (Redis was unreachable at start
//! and connections came in, or the claim lapsed during an outage and was taken), that is
//! logged as an error: those connections keep ids that now name the other instance, so a
//! send to them by id goes there, until they reconnect.

use redis::{Connection, RedisResult};

use super::members::TTL;
use crate::hub::{ConnId, NodeNumber};

/// Takes `KEYS[1]` for `ARGV[1]` unless another holds it, and renews it if it is ours;
/// 1 if ours now.
const CLAIM: &str = "if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end \
    if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end \
    return 0";
/// Deletes `KEYS[1]` only if it is still ours.
const RELEASE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

/// Numbers a cluster member may claim: 1 to 1023.
const FIRST: u16 = 1;
const COUNT: u16 = ConnId::MAX_NODES as u16 - 1;

/// A provisional number, from a random draw.
pub(super) fn provisional(random: u64) -> u16 {
    FIRST + (random % COUNT as u64) as u16
}

fn key(prefix: &str, number: u16) -> String {
    format!("{prefix}:nodeid:{number}")
}

fn claim(connection: &mut Connection, prefix: &str, instance: u64, number: u16) -> RedisResult<bool> {
    let ttl = TTL.as_millis() as u64;
    let ours: i64 =
        redis::cmd("EVAL").arg(CLAIM).arg(1).arg(key(prefix, number)).arg(instance).arg(ttl).query(connection)?;
    Ok(ours == 1)
}

/// Claims or renews this instance's current number; if another instance holds it, moves
/// to a free one (see the module's doc). On a heartbeat, and first of all on every
/// connection to Redis. `crowded`: the publisher's memory of whether every number was
/// held at the last try, so that state is logged once, not every heartbeat.
pub(super) fn hold(
    connection: &mut Connection,
    prefix: &str,
    instance: u64,
    node: &NodeNumber,
    crowded: &mut bool,
) -> RedisResult<()> {
    let current = node.get();
    if claim(connection, prefix, instance, current)? {
        if std::mem::take(crowded) {
            log::warn!("cluster: this instance now holds node number {current} alone");
        }
        return Ok(());
    }
    let start = provisional(getrandom::u64().unwrap_or(current as u64));
    for offset in 0..COUNT {
        let number = FIRST + (start - FIRST + offset) % COUNT;
        if number == current || !claim(connection, prefix, instance, number)? {
            continue;
        }
        if node.replace(number) {
            log::error!(
                "cluster: node number {current} is held by another instance ({}); the connections this one \
                 opened under it keep ids that name that instance, so sends to them by id go there until they \
                 reconnect; new connections get node number {number}",
                key(prefix, current)
            );
        } else {
            log::info!("cluster: node number {current} was taken; this instance is node {number}");
        }
        *crowded = false;
        return Ok(());
    }
    if std::mem::replace(crowded, true) {
        return Ok(());
    }
    log::error!(
        "cluster: all {COUNT} node numbers are held; this instance keeps {current}, which another one holds too, \
         so their connection ids may collide (retrying every heartbeat)"
    );
    Ok(())
}

/// Frees this instance's number on a clean shutdown (best effort: the TTL covers a
/// failure), unless another instance holds it by now.
pub(super) fn release(connection: &mut Connection, prefix: &str, instance: u64, node: &NodeNumber) {
    let _: RedisResult<i64> =
        redis::cmd("EVAL").arg(RELEASE).arg(1).arg(key(prefix, node.get())).arg(instance).query(connection);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provisional_numbers_are_never_0_and_cover_1_to_1023() {
        assert_eq!(provisional(0), 1);
        assert_eq!(provisional(1022), 1023);
        assert_eq!(provisional(1023), 1);
        assert!((0..5000).map(provisional).all(|n| (1..=1023).contains(&n)));
    }
}
