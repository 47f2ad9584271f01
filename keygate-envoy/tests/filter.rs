//! The filter's decisions through its safe [`Stream`] interface, with a
//! recording stream in Envoy's place. The real Envoy runs the same filter in
//! tests/e2e/test_envoy_module.py.

use std::collections::BTreeMap;

use keygate_envoy::filter::{FilterConfig, HeadersAction, Stream, FILTER_NAME};

/// A request as Envoy would show it, and what the filter did to it.
#[derive(Default)]
struct RecordingStream {
    request: BTreeMap<String, Vec<u8>>,
    response_headers: BTreeMap<String, String>,
    reply: Option<LocalReply>,
}

#[derive(Debug)]
struct LocalReply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
    details: String,
}

impl RecordingStream {
    fn with(headers: &[(&str, &str)]) -> Self {
        Self {
            request: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect(),
            ..Self::default()
        }
    }
}

impl Stream for RecordingStream {
    fn request_header(&self, name: &str) -> Option<&[u8]> {
        self.request.get(name).map(Vec::as_slice)
    }

    fn set_request_header(&mut self, name: &str, value: &str) {
        self.request
            .insert(name.to_owned(), value.as_bytes().to_vec());
    }

    fn remove_request_header(&mut self, name: &str) {
        self.request.remove(name);
    }

    fn set_response_header(&mut self, name: &str, value: &str) {
        self.response_headers
            .insert(name.to_owned(), value.to_owned());
    }

    fn send_local_reply(
        &mut self,
        status: u16,
        headers: &[(&str, &str)],
        body: &str,
        details: &str,
    ) {
        assert!(self.reply.is_none(), "two local replies for one request");
        self.reply = Some(LocalReply {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.to_owned(),
            details: details.to_owned(),
        });
    }
}

fn config() -> FilterConfig {
    FilterConfig::new(FILTER_NAME.as_bytes(), b"").expect("config")
}

#[test]
fn a_request_without_a_credential_gets_a_json_401() {
    let mut stream = RecordingStream::with(&[]);
    assert_eq!(
        config().on_request_headers(&mut stream),
        HeadersAction::Stop
    );
    let reply = stream.reply.expect("a local reply");
    assert_eq!(reply.status, 401);
    assert!(reply
        .headers
        .contains(&("content-type".into(), "application/json".into())));
    assert!(
        reply.body.contains(r#""code":"missing_credentials""#),
        "{}",
        reply.body
    );
    assert_eq!(reply.details, "keygate_missing_credentials");
}

#[test]
fn a_request_with_a_credential_continues() {
    let mut stream = RecordingStream::with(&[("authorization", "Bearer x")]);
    assert_eq!(
        config().on_request_headers(&mut stream),
        HeadersAction::Continue
    );
    assert!(stream.reply.is_none());
}

#[test]
fn a_config_for_another_filter_name_is_refused() {
    let err = FilterConfig::new(b"not-keygate", b"").unwrap_err();
    assert!(err.to_string().contains("not-keygate"), "{err}");
}
