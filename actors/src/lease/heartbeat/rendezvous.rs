//! Rendezvous (highest random weight) placement: every node ranks the
//! nodes for a key by `hash(key, node)`, highest first, and all agree
//! without talking. Removing a node moves only its own keys; adding one
//! takes a fair share of new keys. The hash is fixed here (FNV-1a, then a
//! 64-bit finalizer) so that every version of the agent ranks alike.

/// FNV-1a over `bytes`, then the splitmix64 finalizer.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The weight of `node` for `key`.
pub fn weight(key: &str, node: &str) -> u64 {
    let mut bytes = Vec::with_capacity(key.len() + node.len() + 1);
    bytes.extend_from_slice(key.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(node.as_bytes());
    stable_hash(&bytes)
}

/// `nodes` ranked for `key`, highest weight first (ties by name).
pub fn rank<'a>(key: &str, nodes: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let mut ranked: Vec<(u64, &str)> = nodes.into_iter().map(|n| (weight(key, n), n)).collect();
    ranked.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    ranked.into_iter().map(|(_, n)| n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn the_hash_is_fixed() {
        // Any change here moves claims between nodes on upgrade.
        assert_eq!(stable_hash(b""), 0xf52a_15e9_a9b5_e89b);
        assert_eq!(
            weight("default/web", "node-1"),
            weight("default/web", "node-1")
        );
        assert_ne!(
            weight("default/web", "node-1"),
            weight("default/web", "node-2")
        );
    }

    #[test]
    fn placement_is_balanced_and_moves_only_the_keys_of_a_removed_node() {
        let nodes = ["node-1", "node-2", "node-3"];
        let keys: Vec<String> = (0..3000).map(|i| format!("ns/svc-{i}")).collect();
        let mut count: BTreeMap<&str, usize> = BTreeMap::new();
        for k in &keys {
            *count.entry(rank(k, nodes)[0]).or_default() += 1;
        }
        for (n, c) in &count {
            assert!((900..=1100).contains(c), "{n} got {c} of 3000");
        }
        let moved = keys
            .iter()
            .filter(|k| {
                let before = rank(k, nodes)[0];
                let after = rank(k, ["node-1", "node-2"])[0];
                before != "node-3" && before != after
            })
            .count();
        assert_eq!(moved, 0);
    }
}
