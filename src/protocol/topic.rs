//! Topic names and the glob patterns that select them (`--topic-rule`, a credential's
//! `subs` / `pubs`).

/// Longest topic name accepted, in bytes.
pub const MAX_TOPIC_LEN: usize = 256;

/// A topic is 1 to 256 bytes with no control characters.
pub fn check_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        return Err("topic must not be empty".into());
    }
    if topic.len() > MAX_TOPIC_LEN {
        return Err(format!("topic is {} bytes; the limit is {MAX_TOPIC_LEN}", topic.len()));
    }
    if topic.chars().any(char::is_control) {
        return Err("topic must not contain control characters".into());
    }
    Ok(())
}

/// Matches `name` against a pattern where `*` stands for any run of characters.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let Some((head, rest)) = pattern.split_once('*') else { return pattern == name };
    let Some(mut remaining) = name.strip_prefix(head) else { return false };
    let parts: Vec<&str> = rest.split('*').collect();
    let (middle, last) = parts.split_at(parts.len() - 1);
    for part in middle {
        match remaining.find(part) {
            Some(at) => remaining = &remaining[at + part.len()..],
            None => return false,
        }
    }
    remaining.len() >= last[0].len() && remaining.ends_with(last[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_shell_patterns() {
        assert!(glob_match("ticker.*", "ticker.btc"));
        assert!(glob_match("ticker.*", "ticker."));
        assert!(!glob_match("ticker.*", "tick"));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("a*b*c", "a-x-b-y-c"));
        assert!(!glob_match("a*b*c", "a-x-c"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
        assert!(glob_match("*.log", "app.log"));
        assert!(!glob_match("ab*ba", "aba"), "head and tail may not overlap");
    }
}
