//! A forward-auth request read into the borrowed [`CheckInput`] that Check
//! also builds: the original method and URI from the headers each proxy
//! sends, the credential, the client address and the route requirements.
//!
//! Anything ambiguous is a [`BadRequest`], answered with 400, never an
//! allowance: a repeated credential or URI header, an original URI that is
//! not a path (absolute, garbage, not text), a `.` or `..` segment, a method
//! header without its URI header (falling back to the auth request's own
//! path would check the wrong route).

use http::{
    header::{HeaderName, HeaderValue},
    HeaderMap, Method, Request,
};

use crate::{
    authz::{CheckInput, HeaderText, NotUtf8},
    domain::RouteRequirements,
};

// Header names are parsed once, here: a lookup by `&str` parses the name
// again on every request.
/// Traefik and Caddy.
static FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
static FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
/// NGINX (`proxy_set_header X-Original-URI $request_uri`).
static ORIGINAL_METHOD: HeaderName = HeaderName::from_static("x-original-method");
static ORIGINAL_URI: HeaderName = HeaderName::from_static("x-original-uri");
static FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
/// Route requirements set by the proxy's configuration per location.
static REQUIRE_ABILITIES: HeaderName = HeaderName::from_static("keygate-require-abilities");
static REQUIRE_ENVIRONMENT: HeaderName = HeaderName::from_static("keygate-require-environment");
static MODE: HeaderName = HeaderName::from_static("keygate-mode");

/// Why a forward-auth request cannot be decided.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadRequest {
    #[error("the {0} header is sent more than once")]
    Repeated(String),
    #[error("the {0} header is not valid text")]
    NotText(&'static str),
    #[error("{method} is sent without {uri}")]
    MethodWithoutUri {
        method: &'static str,
        uri: &'static str,
    },
    #[error("the original URI must be a path starting with '/'")]
    NotAPath,
    #[error("the original path has a '.' or '..' segment")]
    DotSegment,
    #[error("the original method is not an HTTP method")]
    BadMethod,
    #[error("the request path does not start with the configured path prefix")]
    OutsidePrefix,
    #[error("keygate-mode must be 'shadow' or 'enforce'")]
    UnknownMode,
}

/// What the listener reads, from the configuration.
#[derive(Debug, Clone, Default)]
pub struct InputSettings {
    pub authorization_header: String,
    pub api_key_header: String,
    /// Envoy HTTP ext_authz `path_prefix`, removed from the request's own
    /// path; empty for none.
    pub path_prefix: String,
}

/// [`InputSettings`] with the credential header names parsed once.
pub struct Reader {
    authorization: HeaderName,
    api_key: HeaderName,
    path_prefix: String,
}

impl Reader {
    /// The header names were validated with the rest of the configuration.
    pub fn new(settings: &InputSettings) -> Self {
        let name = |name: &str| {
            HeaderName::from_bytes(name.as_bytes())
                .expect("the configuration validates header names")
        };
        Self {
            authorization: name(&settings.authorization_header),
            api_key: name(&settings.api_key_header),
            path_prefix: settings.path_prefix.clone(),
        }
    }
}

/// Reads `request` into a [`CheckInput`] borrowed from it. `peer` is the
/// connection's remote address.
pub fn read<'a, B>(
    request: &'a Request<B>,
    reader: &Reader,
    peer: &'a str,
) -> Result<CheckInput<'a>, BadRequest> {
    let headers = request.headers();
    let (method, path) = original_request(request, &reader.path_prefix)?;
    Ok(CheckInput {
        authorization: credential(headers, &reader.authorization)?,
        api_key: credential(headers, &reader.api_key)?,
        // Proxies append to one header; should a client add another, the
        // trusted hops are still the right-most entries, in the last one.
        forwarded_for: headers
            .get_all(&FORWARDED_FOR)
            .iter()
            .next_back()
            .and_then(|value| value.to_str().ok()),
        source_address: Some(match single(headers, &REAL_IP)? {
            Some(value) => value
                .to_str()
                .map_err(|_| BadRequest::NotText(REAL_IP.as_str()))?,
            None => peer,
        }),
        method,
        path,
        context_extensions: None,
        requirements: requirements(headers)?,
    })
}

/// The original method and path, in order of preference: the
/// `X-Forwarded-*` pair, the `X-Original-*` pair, the request itself with
/// the path prefix removed.
fn original_request<'a, B>(
    request: &'a Request<B>,
    path_prefix: &str,
) -> Result<(&'a str, &'a str), BadRequest> {
    let headers = request.headers();
    for (method_header, uri_header) in [
        (&FORWARDED_METHOD, &FORWARDED_URI),
        (&ORIGINAL_METHOD, &ORIGINAL_URI),
    ] {
        let method = single(headers, method_header)?;
        let uri = single(headers, uri_header)?;
        match (method, uri) {
            (_, Some(uri)) => {
                let uri = uri
                    .to_str()
                    .map_err(|_| BadRequest::NotText(uri_header.as_str()))?;
                let method = match method {
                    Some(value) => http_method(value)?,
                    None => request.method().as_str(),
                };
                return Ok((method, checked_path(uri)?));
            }
            (Some(_), None) => {
                return Err(BadRequest::MethodWithoutUri {
                    method: method_header.as_str(),
                    uri: uri_header.as_str(),
                })
            }
            (None, None) => {}
        }
    }
    let own = request
        .uri()
        .path_and_query()
        .map_or("/", |path| path.as_str());
    let path = match path_prefix {
        "" => own,
        prefix => own
            .strip_prefix(prefix)
            .filter(|rest| rest.starts_with('/'))
            .ok_or(BadRequest::OutsidePrefix)?,
    };
    Ok((request.method().as_str(), checked_path(path)?))
}

fn http_method(value: &HeaderValue) -> Result<&str, BadRequest> {
    let text = value.to_str().map_err(|_| BadRequest::BadMethod)?;
    Method::from_bytes(text.as_bytes()).map_err(|_| BadRequest::BadMethod)?;
    Ok(text)
}

/// An origin-form path (query allowed) without dot segments, plain or
/// percent-encoded: route rules must see the path the upstream will serve.
fn checked_path(uri: &str) -> Result<&str, BadRequest> {
    if !uri.starts_with('/') || uri.starts_with("//") {
        return Err(BadRequest::NotAPath);
    }
    let path = uri.split(['?', '#']).next().unwrap_or(uri);
    // Most paths have neither a dot nor an escape: one scan clears them.
    if !path.bytes().any(|b| b == b'.' || b == b'%') {
        return Ok(uri);
    }
    let dot = |segment: &str| {
        let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
        decoded == "." || decoded == ".."
    };
    if path
        .split('/')
        .any(|segment| segment.len() <= 6 && dot(segment))
    {
        return Err(BadRequest::DotSegment);
    }
    Ok(uri)
}

/// A credential header: bytes that are not UTF-8 are reported as such (a
/// malformed key), a repeated one is ambiguous.
fn credential<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
) -> Result<Option<HeaderText<'a>>, BadRequest> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(BadRequest::Repeated(name.as_str().to_owned()));
    }
    Ok(first.map(|value| std::str::from_utf8(value.as_bytes()).map_err(|_| NotUtf8)))
}

fn single<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
) -> Result<Option<&'a HeaderValue>, BadRequest> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    match values.next() {
        Some(_) => Err(BadRequest::Repeated(name.as_str().to_owned())),
        None => Ok(first),
    }
}

fn text<'a>(
    headers: &'a HeaderMap,
    name: &'static HeaderName,
) -> Result<Option<&'a str>, BadRequest> {
    single(headers, name)?
        .map(|value| {
            value
                .to_str()
                .map_err(|_| BadRequest::NotText(name.as_str()))
        })
        .transpose()
}

/// The `Keygate-*` requirements when the proxy sends any, else `None` (the
/// configured route rules apply).
fn requirements(headers: &HeaderMap) -> Result<Option<RouteRequirements<'_>>, BadRequest> {
    let abilities = text(headers, &REQUIRE_ABILITIES)?;
    let environment = text(headers, &REQUIRE_ENVIRONMENT)?.filter(|e| !e.is_empty());
    let shadow = match text(headers, &MODE)? {
        None => None,
        Some(mode) if mode.eq_ignore_ascii_case("shadow") => Some(true),
        Some(mode) if mode.eq_ignore_ascii_case("enforce") => Some(false),
        Some(_) => return Err(BadRequest::UnknownMode),
    };
    if abilities.is_none() && environment.is_none() && shadow.is_none() {
        return Ok(None);
    }
    Ok(Some(RouteRequirements {
        abilities,
        environment,
        shadow: shadow.unwrap_or(false),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(prefix: &str) -> Reader {
        Reader::new(&InputSettings {
            authorization_header: "authorization".into(),
            api_key_header: "x-api-key".into(),
            path_prefix: prefix.into(),
        })
    }

    fn request(uri: &str, headers: &[(&str, &[u8])]) -> Request<()> {
        let mut builder = Request::builder().method("POST").uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, HeaderValue::from_bytes(value).unwrap());
        }
        builder.body(()).unwrap()
    }

    fn read_ok<'a>(request: &'a Request<()>, settings: &Reader) -> CheckInput<'a> {
        read(request, settings, "10.0.0.9").expect("readable")
    }

    #[test]
    fn traefik_headers_win_over_nginx_headers_which_win_over_the_request() {
        let both = request(
            "/auth",
            &[
                (FORWARDED_METHOD.as_str(), b"DELETE"),
                (FORWARDED_URI.as_str(), b"/v1/orders/1?x=y"),
                (ORIGINAL_METHOD.as_str(), b"GET"),
                (ORIGINAL_URI.as_str(), b"/other"),
            ],
        );
        let input = read_ok(&both, &settings(""));
        assert_eq!((input.method, input.path), ("DELETE", "/v1/orders/1?x=y"));
        let nginx = request(
            "/auth",
            &[
                (ORIGINAL_METHOD.as_str(), b"PUT"),
                (ORIGINAL_URI.as_str(), b"/v1/x"),
            ],
        );
        let input = read_ok(&nginx, &settings(""));
        assert_eq!((input.method, input.path), ("PUT", "/v1/x"));
        let own = request("/v1/own?q=1", &[]);
        let input = read_ok(&own, &settings(""));
        assert_eq!((input.method, input.path), ("POST", "/v1/own?q=1"));
    }

    #[test]
    fn envoy_path_prefix_is_removed_and_required() {
        let input = request("/ext-authz/v1/orders", &[]);
        assert_eq!(read_ok(&input, &settings("/ext-authz")).path, "/v1/orders");
        let outside = request("/ext-authzed/v1", &[]);
        assert_eq!(
            read(&outside, &settings("/ext-authz"), "p").unwrap_err(),
            BadRequest::OutsidePrefix
        );
    }

    /// Request headers as a test writes them: names and raw values.
    type RawHeaders<'a> = &'a [(&'a str, &'a [u8])];

    #[test]
    fn ambiguous_or_garbage_originals_are_bad_requests() {
        let cases: [(RawHeaders, BadRequest); 8] = [
            (
                &[(ORIGINAL_METHOD.as_str(), b"GET")],
                BadRequest::MethodWithoutUri {
                    method: ORIGINAL_METHOD.as_str(),
                    uri: ORIGINAL_URI.as_str(),
                },
            ),
            (
                &[(ORIGINAL_URI.as_str(), b"http://evil/x")],
                BadRequest::NotAPath,
            ),
            (
                &[(ORIGINAL_URI.as_str(), b"//evil/x")],
                BadRequest::NotAPath,
            ),
            (&[(ORIGINAL_URI.as_str(), b"")], BadRequest::NotAPath),
            (
                &[(ORIGINAL_URI.as_str(), b"/a/../admin")],
                BadRequest::DotSegment,
            ),
            (
                &[(ORIGINAL_URI.as_str(), b"/a/%2E%2e/admin")],
                BadRequest::DotSegment,
            ),
            (
                &[(ORIGINAL_URI.as_str(), b"/caf\xc3\xa9")],
                BadRequest::NotText(ORIGINAL_URI.as_str()),
            ),
            (
                &[
                    (ORIGINAL_URI.as_str(), b"/a"),
                    (ORIGINAL_URI.as_str(), b"/b"),
                ],
                BadRequest::Repeated(ORIGINAL_URI.as_str().into()),
            ),
        ];
        for (headers, want) in cases {
            let r = request("/auth", headers);
            assert_eq!(read(&r, &settings(""), "p").unwrap_err(), want);
        }
        let r = request(
            "/auth",
            &[
                (ORIGINAL_METHOD.as_str(), b"G E T"),
                (ORIGINAL_URI.as_str(), b"/a"),
            ],
        );
        assert_eq!(
            read(&r, &settings(""), "p").unwrap_err(),
            BadRequest::BadMethod
        );
    }

    #[test]
    fn a_repeated_credential_is_a_bad_request_and_non_utf8_is_reported() {
        let r = request(
            "/",
            &[
                ("authorization", b"Bearer a"),
                ("authorization", b"Bearer b"),
            ],
        );
        assert_eq!(
            read(&r, &settings(""), "p").unwrap_err(),
            BadRequest::Repeated("authorization".into())
        );
        let r = request("/", &[("x-api-key", b"sk_live_\xff")]);
        assert_eq!(read_ok(&r, &settings("")).api_key, Some(Err(NotUtf8)));
    }

    #[test]
    fn the_client_address_comes_from_the_proxy_headers_then_the_peer() {
        let r = request(
            "/",
            &[
                (FORWARDED_FOR.as_str(), b"1.1.1.1"),
                (REAL_IP.as_str(), b"2.2.2.2"),
            ],
        );
        let input = read_ok(&r, &settings(""));
        assert_eq!(input.forwarded_for, Some("1.1.1.1"));
        assert_eq!(input.source_address, Some("2.2.2.2"));
        let r = request("/", &[]);
        assert_eq!(read_ok(&r, &settings("")).source_address, Some("10.0.0.9"));
    }

    #[test]
    fn keygate_headers_set_the_route_requirements() {
        let r = request(
            "/",
            &[
                (REQUIRE_ABILITIES.as_str(), b"read:orders"),
                (REQUIRE_ENVIRONMENT.as_str(), b"live"),
                (MODE.as_str(), b"shadow"),
            ],
        );
        assert_eq!(
            read_ok(&r, &settings("")).requirements,
            Some(RouteRequirements {
                abilities: Some("read:orders"),
                environment: Some("live"),
                shadow: true,
            })
        );
        assert_eq!(
            read_ok(&request("/", &[]), &settings("")).requirements,
            None
        );
        let r = request("/", &[(MODE.as_str(), b"sometimes")]);
        assert_eq!(
            read(&r, &settings(""), "p").unwrap_err(),
            BadRequest::UnknownMode
        );
    }
}
