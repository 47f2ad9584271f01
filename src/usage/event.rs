//! What one usage event may hold of a request: a method label from a fixed
//! set and a path cut to a bounded length, so that the size of a request
//! (up to the Check listener's message limit) never decides the size of an
//! event that waits in the buffer.

/// Longest raw path an event keeps. Stored endpoints are cut at 256 bytes
/// after normalisation, and a normalised segment is never longer than the
/// raw one it replaces, so a longer raw path could not change what is
/// stored beyond the first segments kept here.
pub const MAX_EVENT_PATH: usize = 512;

/// Bytes of a path an event holds in place, without a heap allocation: most
/// API paths are shorter, so recording a request allocates nothing.
const INLINE_PATH: usize = 64;

/// The path an event keeps ([`recorded_path`]): in place when it is short,
/// on the heap otherwise.
#[derive(Clone, PartialEq, Eq)]
pub struct EventPath(Stored);

#[derive(Clone, PartialEq, Eq)]
enum Stored {
    Inline { len: u8, bytes: [u8; INLINE_PATH] },
    Heap(Box<str>),
}

impl EventPath {
    pub fn new(path: &str) -> Self {
        match u8::try_from(path.len()) {
            Ok(len) if path.len() <= INLINE_PATH => {
                let mut bytes = [0; INLINE_PATH];
                bytes[..path.len()].copy_from_slice(path.as_bytes());
                Self(Stored::Inline { len, bytes })
            }
            _ => Self(Stored::Heap(path.into())),
        }
    }

    pub fn as_str(&self) -> &str {
        match &self.0 {
            // Copied whole from a `&str`, so always UTF-8; the check runs in
            // the flusher, off the Check path.
            Stored::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            Stored::Heap(path) => path,
        }
    }

    /// Bytes held on the heap beyond the event itself.
    pub fn heap_bytes(&self) -> usize {
        match &self.0 {
            Stored::Inline { .. } => 0,
            Stored::Heap(path) => path.len(),
        }
    }
}

impl std::fmt::Debug for EventPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

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
    fn event_paths_keep_their_text_inline_or_on_the_heap() {
        let short = "/v1/orders/42";
        let exactly = format!("/{}", "a".repeat(INLINE_PATH - 1));
        let long = format!("/{}", "é".repeat(INLINE_PATH));
        for path in [short, "", exactly.as_str(), long.as_str()] {
            assert_eq!(EventPath::new(path).as_str(), path);
        }
        assert_eq!(EventPath::new(&exactly).heap_bytes(), 0);
        assert_eq!(EventPath::new(&long).heap_bytes(), long.len());
        assert_eq!(format!("{:?}", EventPath::new(short)), format!("{short:?}"));
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
