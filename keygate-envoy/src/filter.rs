//! The filter's behaviour, independent of how Envoy calls it.

use std::fmt;

/// The `filter_name` in Envoy's `DynamicModuleFilter` config that selects
/// this filter.
pub const FILTER_NAME: &str = "keygate";

/// What the filter sees of one HTTP stream: the request headers, and the
/// means to answer in Envoy's place.
pub trait Stream {
    fn request_header(&self, name: &str) -> Option<&[u8]>;
    fn set_request_header(&mut self, name: &str, value: &str);
    fn remove_request_header(&mut self, name: &str);
    fn set_response_header(&mut self, name: &str, value: &str);
    /// Answers the request without forwarding it; `details` names the reason
    /// in Envoy's access log (`%RESPONSE_CODE_DETAILS%`).
    fn send_local_reply(
        &mut self,
        status: u16,
        headers: &[(&str, &str)],
        body: &str,
        details: &str,
    );
}

/// Whether Envoy goes on with the request after the headers hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadersAction {
    Continue,
    /// The filter answered with a local reply.
    Stop,
}

/// Why Envoy's filter config was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    UnknownFilter(String),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownFilter(name) => write!(
                f,
                "unknown filter_name {name:?}: this module provides {FILTER_NAME:?}"
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

/// One Envoy filter config: shared by every stream it filters, on every
/// worker thread.
#[derive(Debug)]
pub struct FilterConfig {}

const MISSING_CREDENTIALS_BODY: &str =
    r#"{"error":{"code":"missing_credentials","message":"An API key is required."}}"#;

impl FilterConfig {
    pub fn new(name: &[u8], _config: &[u8]) -> Result<Self, ConfigError> {
        if name != FILTER_NAME.as_bytes() {
            return Err(ConfigError::UnknownFilter(
                String::from_utf8_lossy(name).into_owned(),
            ));
        }
        Ok(Self {})
    }

    /// Feasibility step: a request without `authorization` is answered 401.
    pub fn on_request_headers(&self, stream: &mut impl Stream) -> HeadersAction {
        if stream.request_header("authorization").is_some() {
            return HeadersAction::Continue;
        }
        stream.send_local_reply(
            401,
            &[("content-type", "application/json")],
            MISSING_CREDENTIALS_BODY,
            "keygate_missing_credentials",
        );
        HeadersAction::Stop
    }
}
