//! Values from a request target's query string (`?user=`, `?token=`, `?ticket=`).

/// The percent-decoded value of `name` in the target's query string (the first, if it
/// is there more than once).
pub(super) fn query_param(target: &str, name: &str) -> Option<String> {
    query_params(target, name).next()
}

/// Every percent-decoded value of `name` in the target's query string, in order.
pub(super) fn query_params<'a>(target: &'a str, name: &'a str) -> impl Iterator<Item = String> + 'a {
    let query = target.split_once('?').map_or("", |(_, query)| query);
    query.split('&').filter_map(move |pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| percent_decode(value))
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push((hi * 16 + lo) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_query_parameters() {
        assert_eq!(query_param("/ws?a=1&user=b%40c.d", "user").as_deref(), Some("b@c.d"));
        assert_eq!(query_param("/ws?user=", "user").as_deref(), Some(""));
        assert_eq!(query_param("/ws", "user"), None);
        assert_eq!(query_param("/ws?user=100%", "user").as_deref(), Some("100%"));
    }
}
