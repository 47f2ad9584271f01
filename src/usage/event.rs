//! What one usage event may hold of a request: a method label from a fixed
//! set and a path cut to a bounded length, so that the size of a request
//! (up to the Check listener's message limit) never decides the size of an
//! event that waits in the buffer.

/// Longest raw path an event keeps. Stored endpoints are cut at 256 bytes
/// after normalisation, and a normalised segment is never longer than the
/// raw one it replaces, so a longer raw path could not change what is
/// stored beyond the first segments kept here.
pub const MAX_EVENT_PATH: usize = 512;

/// The methods recorded by name; any other is recorded as `OTHER`.
const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE",
];

/// The method as recorded: one of the standard methods, else `OTHER`.
pub fn method_label(method: &str) -> &'static str {
    METHODS
        .iter()
        .find(|known| known.eq_ignore_ascii_case(method))
        .copied()
        .unwrap_or("OTHER")
}

/// The part of `path` an event keeps: the query string and fragment are
/// dropped (normalisation drops them anyway), and a path longer than
/// [`MAX_EVENT_PATH`] is cut at the last `/` that fits, so no segment is
/// recorded half. Looks at no more than the bytes it may keep, however long
/// the path.
pub fn recorded_path(path: &str) -> &str {
    let bytes = path.as_bytes();
    let head = &bytes[..bytes.len().min(MAX_EVENT_PATH + 1)];
    // `?`, `#` and `/` are ASCII, so every cut is on a character boundary.
    if let Some(end) = head.iter().position(|b| matches!(b, b'?' | b'#')) {
        return &path[..end];
    }
    if bytes.len() <= MAX_EVENT_PATH {
        return path;
    }
    match head.iter().rposition(|b| *b == b'/') {
        Some(cut) => &path[..cut],
        None => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_methods_keep_their_name_and_others_become_other() {
        assert_eq!(method_label("GET"), "GET");
        assert_eq!(method_label("patch"), "PATCH");
        assert_eq!(method_label("PROPFIND"), "OTHER");
        assert_eq!(method_label(&"X".repeat(1 << 20)), "OTHER");
        assert_eq!(method_label(""), "OTHER");
    }

    #[test]
    fn short_paths_lose_only_their_query() {
        assert_eq!(recorded_path("/v1/orders/42?expand=all"), "/v1/orders/42");
        assert_eq!(recorded_path("/v1/orders#top"), "/v1/orders");
        assert_eq!(recorded_path("/"), "/");
    }

    #[test]
    fn long_paths_are_cut_at_a_segment_boundary_within_the_bound() {
        let long = format!("/v1/{}", "é/abcdefgh".repeat(200_000));
        let kept = recorded_path(&long);
        assert!(kept.len() <= MAX_EVENT_PATH, "{}", kept.len());
        assert!(kept.starts_with("/v1/é/abcdefghé/"));
        assert!(!kept.ends_with('/'));
        assert!(long.starts_with(kept));
        assert!(long[kept.len()..].starts_with('/'));
        let one_segment = format!("/{}", "a".repeat(1 << 20));
        assert_eq!(recorded_path(&one_segment), "");
        let late_query = format!("/v1/{}?q=1", "b/".repeat(1 << 19));
        assert!(recorded_path(&late_query).len() <= MAX_EVENT_PATH);
    }
}
