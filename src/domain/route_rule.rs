//! Route rules: the requirements a route has when the proxy sends none
//! (`[[routes]]` in the TOML file, e.g. under Istio), matched by method and
//! normalised path (see [`super::path`]).

/// A route rule, matched by method and normalised path
/// ([`super::path`]). Paths compare without regard to ASCII case, so that
/// `/V1/orders` cannot slip past a `/v1/orders*` rule to a server that
/// ignores case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRule {
    pub method: Option<String>,
    pub path: String,
    pub abilities: String,
    pub environment: Option<String>,
    pub shadow: bool,
}

impl RouteRule {
    /// Whether a request with `method` and (normalised) `path` falls under
    /// this rule; the query is ignored.
    pub fn matches(&self, method: &str, path: &str) -> bool {
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        let method_ok = self
            .method
            .as_deref()
            .is_none_or(|m| m.eq_ignore_ascii_case(method));
        let path_ok = match self.path.strip_suffix('*') {
            Some(prefix) => path
                .get(..prefix.len())
                .is_some_and(|start| start.eq_ignore_ascii_case(prefix)),
            None => path.eq_ignore_ascii_case(&self.path),
        };
        method_ok && path_ok
    }
}
