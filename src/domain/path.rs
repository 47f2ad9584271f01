//! Request paths as route rules see them.
//!
//! A rule written for `/v1/orders*` must hold for every spelling of that
//! path an upstream server would resolve to it, so rules match the path
//! after RFC 3986 normalisation (section 6.2.2): percent-escapes of
//! unreserved characters decoded (the other escapes kept, with upper-case
//! hex), dot-segments removed, runs of slashes merged; query and fragment
//! dropped. Case is left as it is: rule matching ignores ASCII case instead
//! (see [`super::RouteRule`]).
//!
//! A path that upstream servers resolve in different ways is refused rather
//! than guessed at ([`PathError`]): an encoded `/` or `\`, a raw `\` (a
//! separator to some servers), a relative path, `..` above the root, an
//! invalid percent-escape, or a dot-segment carrying `;` parameters (Tomcat
//! reads `/..;/` as `/../`).
//!
//! A path that is already normal (what Envoy sends once it normalises paths
//! itself) is returned borrowed: the Check path allocates only for the rare
//! path that needs rewriting.

use std::borrow::Cow;

use percent_encoding::{percent_decode, percent_encode_byte};

/// Why a path cannot be normalised unambiguously.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path is not absolute")]
    Relative,
    #[error("the path contains an encoded slash or backslash")]
    EncodedSeparator,
    #[error("the path contains a backslash")]
    Backslash,
    #[error("the path climbs above the root with '..'")]
    AboveRoot,
    #[error("the path contains an invalid percent-escape")]
    InvalidEscape,
    #[error("a dot-segment of the path carries ';' parameters")]
    DotSegmentParameters,
}

/// The normalised path of a request target (`/v1/./orders?x=1` →
/// `/v1/orders`).
pub fn normalize(target: &str) -> Result<Cow<'_, str>, PathError> {
    let path = target.split(['?', '#']).next().unwrap_or_default();
    if !path.starts_with('/') {
        return Err(PathError::Relative);
    }
    let escapes_to_rewrite = check_escapes(path)?;
    let segments_to_rewrite = path.contains("//") || path.split('/').any(is_dot_segment);
    if !escapes_to_rewrite && !segments_to_rewrite {
        check_dot_parameters(path[1..].split('/'))?;
        return Ok(Cow::Borrowed(path));
    }
    rewrite(path).map(Cow::Owned)
}

/// Validates every byte that could make the path ambiguous; true when an
/// escape needs rewriting (unreserved, or lower-case hex).
fn check_escapes(path: &str) -> Result<bool, PathError> {
    let bytes = path.as_bytes();
    let mut rewrite = false;
    for (i, byte) in bytes.iter().enumerate() {
        match byte {
            b'\\' => return Err(PathError::Backslash),
            b'%' => {
                let escape = bytes.get(i..i + 3).ok_or(PathError::InvalidEscape)?;
                if !escape[1..].iter().all(u8::is_ascii_hexdigit) {
                    return Err(PathError::InvalidEscape);
                }
                let decoded = decode_escape(escape);
                if matches!(decoded, b'/' | b'\\') {
                    return Err(PathError::EncodedSeparator);
                }
                rewrite |= is_unreserved(decoded) || escape[1..].iter().any(u8::is_ascii_lowercase);
            }
            _ => {}
        }
    }
    Ok(rewrite)
}

/// The byte a validated `%XX` escape stands for.
fn decode_escape(escape: &[u8]) -> u8 {
    percent_decode(escape)
        .next()
        .expect("a validated escape decodes to one byte")
}

/// RFC 3986 `unreserved`: equivalent whether escaped or not.
fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

fn is_dot_segment(segment: &str) -> bool {
    segment == "." || segment == ".."
}

fn check_dot_parameters<'a>(segments: impl Iterator<Item = &'a str>) -> Result<(), PathError> {
    for segment in segments {
        if segment
            .split_once(';')
            .is_some_and(|(name, _)| is_dot_segment(name))
        {
            return Err(PathError::DotSegmentParameters);
        }
    }
    Ok(())
}

/// Escapes of unreserved characters decoded, other escapes in upper case.
fn decode_unreserved(segment: &str) -> Cow<'_, str> {
    if !segment.contains('%') {
        return Cow::Borrowed(segment);
    }
    let mut out = String::with_capacity(segment.len());
    let mut rest = segment;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let decoded = decode_escape(&rest.as_bytes()[at..at + 3]);
        if is_unreserved(decoded) {
            out.push(char::from(decoded));
        } else {
            out.push_str(percent_encode_byte(decoded));
        }
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// The slow path: decode, then remove dot-segments and empty segments.
/// Escapes were validated by [`check_escapes`].
fn rewrite(path: &str) -> Result<String, PathError> {
    let decoded: Vec<Cow<'_, str>> = path[1..].split('/').map(decode_unreserved).collect();
    check_dot_parameters(decoded.iter().map(|segment| segment.as_ref()))?;
    let mut kept: Vec<&str> = Vec::with_capacity(decoded.len());
    for segment in &decoded {
        match segment.as_ref() {
            "" | "." => {}
            ".." => {
                kept.pop().ok_or(PathError::AboveRoot)?;
            }
            other => kept.push(other),
        }
    }
    // `/a/b/`, `/a/b/.` and `/a/b/c/..` all name the directory `/a/b/`.
    let last = decoded.last().map_or("", |segment| segment.as_ref());
    let trailing_slash = !kept.is_empty() && (last.is_empty() || is_dot_segment(last));
    let mut normal = String::with_capacity(path.len());
    for segment in &kept {
        normal.push('/');
        normal.push_str(segment);
    }
    if trailing_slash || kept.is_empty() {
        normal.push('/');
    }
    Ok(normal)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn n(path: &str) -> Result<String, PathError> {
        normalize(path).map(Cow::into_owned)
    }

    #[test]
    fn the_issue_vectors_normalise_to_the_rule_path_or_are_refused() {
        for path in [
            "//v1/orders",
            "/v1//orders",
            "/v1/./orders",
            "/x/../v1/orders",
            "/v1/%6frders",
            "/v1/%6Frders",
            "/%2e/v1/%2E%2E/v1/orders",
        ] {
            assert_eq!(n(path).as_deref(), Ok("/v1/orders"), "{path}");
        }
        // Case is kept: rules ignore ASCII case when they compare.
        assert_eq!(n("/V1/orders").as_deref(), Ok("/V1/orders"));
        assert_eq!(n("/v1%2forders"), Err(PathError::EncodedSeparator));
        assert_eq!(n("/v1%2Forders"), Err(PathError::EncodedSeparator));
        assert_eq!(n("/v1%5corders"), Err(PathError::EncodedSeparator));
        assert_eq!(n("v1/orders"), Err(PathError::Relative));
        assert_eq!(n("/v1\\orders"), Err(PathError::Backslash));
    }

    #[test]
    fn dot_segments_above_the_root_are_refused() {
        assert_eq!(n("/.."), Err(PathError::AboveRoot));
        assert_eq!(n("/../v1/orders"), Err(PathError::AboveRoot));
        assert_eq!(n("/v1/../../orders"), Err(PathError::AboveRoot));
        assert_eq!(n("//..//v1"), Err(PathError::AboveRoot));
        assert_eq!(n("/public/%2e%2e/%2e%2e/admin"), Err(PathError::AboveRoot));
        assert_eq!(n("/public/../admin-only/x").as_deref(), Ok("/admin-only/x"));
    }

    #[test]
    fn relative_and_empty_targets_are_refused() {
        for target in ["", "*", "?x=1", "v1", "./v1", "../v1", "http://h/v1"] {
            assert_eq!(n(target), Err(PathError::Relative), "{target:?}");
        }
    }

    #[test]
    fn invalid_percent_escapes_are_refused() {
        for path in ["/v1/%", "/v1/%4", "/v1/%zz", "/v1/%G0/x", "/%%41"] {
            assert_eq!(n(path), Err(PathError::InvalidEscape), "{path}");
        }
    }

    #[test]
    fn dot_segments_with_parameters_are_refused() {
        for path in ["/public/..;/admin", "/a/.;x/b", "/a/%2e%2e;jsessionid=1/b"] {
            assert_eq!(n(path), Err(PathError::DotSegmentParameters), "{path}");
        }
        assert_eq!(n("/a/b;v=1").as_deref(), Ok("/a/b;v=1"));
        assert_eq!(n("/a/...;x").as_deref(), Ok("/a/...;x"));
    }

    #[test]
    fn reserved_escapes_are_kept_with_upper_case_hex() {
        assert_eq!(
            n("/users/john%40example.com").as_deref(),
            Ok("/users/john%40example.com")
        );
        assert_eq!(n("/users/a%3fb").as_deref(), Ok("/users/a%3Fb"));
        assert_eq!(n("/caf%c3%a9").as_deref(), Ok("/caf%C3%A9"));
        assert_eq!(n("/%7euser/%41").as_deref(), Ok("/~user/A"));
        // A decoded `%25` is not re-read as the start of another escape.
        assert_eq!(n("/%2541").as_deref(), Ok("/%2541"));
    }

    #[test]
    fn trailing_slashes_query_and_fragment() {
        assert_eq!(n("/").as_deref(), Ok("/"));
        assert_eq!(n("//").as_deref(), Ok("/"));
        assert_eq!(n("/a/..").as_deref(), Ok("/"));
        assert_eq!(n("/v1/orders/").as_deref(), Ok("/v1/orders/"));
        assert_eq!(n("/v1/orders//").as_deref(), Ok("/v1/orders/"));
        assert_eq!(n("/v1/orders/.").as_deref(), Ok("/v1/orders/"));
        assert_eq!(n("/v1/orders/x/..").as_deref(), Ok("/v1/orders/"));
        assert_eq!(n("/v1/orders?next=/../x").as_deref(), Ok("/v1/orders"));
        assert_eq!(n("/v1/./orders#a/../b").as_deref(), Ok("/v1/orders"));
    }

    #[test]
    fn a_normal_path_is_borrowed() {
        for path in [
            "/",
            "/v1/orders",
            "/v1/orders/",
            "/a/...",
            "/a/.b/c.",
            "/%C3%A9",
        ] {
            assert!(
                matches!(normalize(path), Ok(Cow::Borrowed(p)) if p == path),
                "{path}"
            );
        }
        assert!(matches!(
            normalize("/v1/orders?x=1"),
            Ok(Cow::Borrowed("/v1/orders"))
        ));
    }

    /// Path-ish text: segments of dots, slashes, letters, escapes.
    fn path_like() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("/".to_owned()),
            Just(".".to_owned()),
            Just("..".to_owned()),
            Just(";".to_owned()),
            Just("%2e".to_owned()),
            Just("%41".to_owned()),
            Just("%3f".to_owned()),
            "[a-zA-Z0-9_~-]{1,3}",
        ];
        prop::collection::vec(piece, 0..12).prop_map(|pieces| format!("/{}", pieces.concat()))
    }

    proptest! {
        #[test]
        fn normalising_is_idempotent_and_yields_a_normal_path(path in path_like()) {
            if let Ok(normal) = normalize(&path) {
                prop_assert!(normal.starts_with('/'));
                prop_assert!(!normal.contains("//"), "{normal}");
                prop_assert!(normal.split('/').all(|s| !is_dot_segment(s)), "{normal}");
                let again = normalize(&normal);
                prop_assert!(matches!(again, Ok(Cow::Borrowed(p)) if p == normal), "{normal}");
            }
        }

        #[test]
        fn arbitrary_input_never_panics(target in ".{0,40}") {
            let _ = normalize(&target);
        }
    }
}
