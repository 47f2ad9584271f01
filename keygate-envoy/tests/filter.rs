//! The filter's decisions through its safe [`Stream`] interface, with a
//! recording stream in Envoy's place and real keys from keygate's key
//! format. The real Envoy runs the same filter in
//! tests/e2e/test_envoy_module.py.

use std::{collections::BTreeMap, io::Write, net::IpAddr};

use chrono::{DateTime, Duration, Utc};
use keygate::domain::{IssuedKey, KeyFormat};
use keygate_envoy::{
    feed::Level,
    filter::{
        AnswerApplied, CounterId, DecisionCounters, FilterConfig, HeadersAction, Stream,
        StreamState, FILTER_NAME,
    },
    lookup::{Answer, Verdict},
    settings::RouteSettings,
};
use serde_json::{json, Value};

/// A request as Envoy would show it, and what the filter did to it.
#[derive(Default)]
struct RecordingStream {
    request: BTreeMap<String, Vec<u8>>,
    client: Option<IpAddr>,
    /// `(namespace, key) → value`.
    metadata: BTreeMap<(String, String), String>,
    response_headers: BTreeMap<String, String>,
    reply: Option<LocalReply>,
    counted: Vec<CounterId>,
    /// The requests to keygate the filter started.
    calls: Vec<Call>,
    /// What starting one gives; `Ok` unless a test says otherwise.
    call_refused: Option<&'static str>,
}

#[derive(Debug)]
struct Call {
    cluster: String,
    headers: BTreeMap<String, String>,
    timeout_ms: u64,
}

#[derive(Debug)]
struct LocalReply {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Value,
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

    fn header(&self, name: &str) -> Option<&str> {
        self.request
            .get(name)
            .map(|v| std::str::from_utf8(v).unwrap())
    }
}

impl Stream for RecordingStream {
    fn request_header(&self, name: &str) -> Option<&[u8]> {
        self.request.get(name).map(Vec::as_slice)
    }

    fn client_address(&self) -> Option<IpAddr> {
        self.client
    }

    fn set_request_header(&mut self, name: &str, value: &str) {
        self.request
            .insert(name.to_owned(), value.as_bytes().to_vec());
    }

    fn add_request_header(&mut self, name: &str, value: &str) {
        let had = self
            .request
            .insert(name.to_owned(), value.as_bytes().to_vec());
        assert!(had.is_none(), "{name} added where the request had one");
    }

    fn remove_request_header(&mut self, name: &str) {
        self.request.remove(name);
    }

    fn set_response_header(&mut self, name: &str, value: &str) {
        self.response_headers
            .insert(name.to_owned(), value.to_owned());
    }

    fn set_metadata(&mut self, namespace: &str, key: &str, value: &str) {
        self.metadata
            .insert((namespace.to_owned(), key.to_owned()), value.to_owned());
    }

    fn increment_counter(&mut self, id: CounterId) {
        self.counted.push(id);
    }

    fn call_out(
        &mut self,
        cluster: &str,
        headers: &[(&str, &[u8])],
        timeout_ms: u64,
    ) -> Result<(), &'static str> {
        if let Some(refused) = self.call_refused {
            return Err(refused);
        }
        let mut sent = BTreeMap::new();
        for (name, value) in headers {
            let value = String::from_utf8(value.to_vec()).unwrap();
            assert!(
                sent.insert(name.to_string(), value).is_none(),
                "{name} twice"
            );
        }
        self.calls.push(Call {
            cluster: cluster.to_owned(),
            headers: sent,
            timeout_ms,
        });
        Ok(())
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
            body: serde_json::from_str(body).expect("a JSON body"),
            details: details.to_owned(),
        });
    }
}

fn format() -> KeyFormat {
    KeyFormat::new("sk", &["live".into(), "test".into()], 32).unwrap()
}

/// A snapshot entry for an issued key, with Check's defaults.
fn entry(issued: &IssuedKey, environment: &str, extra: Value) -> Value {
    let mut entry = json!({
        "hash": hex::encode(issued.hash.as_bytes()),
        "id": uuid::Uuid::new_v4(),
        "owner_id": "acme",
        "environment": environment,
        "key_prefix": issued.key_prefix,
    });
    entry
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    entry
}

/// The feed's log, unread: these filters have no feed, or one whose
/// outcome the tests read from the filter's answers.
fn no_log(_: Level, _: &str) {}

/// A filter whose table holds `entries`, with `settings` over the defaults.
fn filter(entries: Vec<Value>, settings: Value) -> (FilterConfig, tempfile::NamedTempFile) {
    let mut snapshot = tempfile::NamedTempFile::new().unwrap();
    let body = json!({"complete": true, "keys": entries});
    snapshot.write_all(body.to_string().as_bytes()).unwrap();
    let mut config = json!({"snapshot_path": snapshot.path(), "metadata_headers": ["tier"]});
    config
        .as_object_mut()
        .unwrap()
        .extend(settings.as_object().unwrap().clone());
    let filter = FilterConfig::new(
        FILTER_NAME.as_bytes(),
        config.to_string().as_bytes(),
        no_log,
    )
    .expect("config");
    (filter, snapshot)
}

fn route(json: Value) -> RouteSettings {
    serde_json::from_value(json).unwrap()
}

struct Outcome {
    action: HeadersAction,
    stream: RecordingStream,
    pending: StreamState,
}

fn run(
    filter: &FilterConfig,
    headers: &[(&str, &str)],
    route: Option<&RouteSettings>,
    now: DateTime<Utc>,
) -> Outcome {
    let mut stream = RecordingStream::with(headers);
    let mut pending = StreamState::default();
    let action = filter.on_request_headers(&mut stream, route, now, &mut pending);
    Outcome {
        action,
        stream,
        pending,
    }
}

/// The denial's code, after checking its shape against Check's.
fn denied(outcome: &Outcome) -> (u16, String) {
    assert_eq!(outcome.action, HeadersAction::Stop);
    let reply = outcome.stream.reply.as_ref().expect("a local reply");
    assert_eq!(reply.headers["content-type"], "application/json");
    let code = reply.body["error"]["code"].as_str().unwrap().to_owned();
    assert!(reply.body["error"]["message"].is_string());
    assert_eq!(reply.details, format!("keygate_{code}"));
    if reply.status == 401 {
        assert_eq!(
            reply.headers["www-authenticate"],
            r#"Bearer realm="keygate""#
        );
    }
    (reply.status, code)
}

fn bearer(issued: &IssuedKey) -> String {
    format!("Bearer {}", issued.plaintext.expose())
}

/// Request headers, route requirements, and the expected status and code.
type Case<'a> = (
    Vec<(&'a str, String)>,
    Option<&'a RouteSettings>,
    u16,
    &'a str,
);

#[test]
fn every_decision_code_of_check_is_answered_in_the_proxy() {
    let f = format();
    let now = Utc::now();
    let active = f.generate("live");
    let revoked = f.generate("live");
    let expired = f.generate("live");
    let suspended = f.generate("live");
    let limited = f.generate("live");
    let test_env = f.generate("test");
    let (filter, _snapshot) = filter(
        vec![
            entry(&active, "live", json!({"abilities": ["read:orders"]})),
            entry(
                &revoked,
                "live",
                json!({"revoked_at": now - Duration::seconds(1)}),
            ),
            entry(
                &expired,
                "live",
                json!({"expires_at": now - Duration::seconds(1)}),
            ),
            entry(&suspended, "live", json!({"owner_suspended": true})),
            entry(
                &limited,
                "live",
                json!({"rate_limit": {"max_attempts": 1, "decay_seconds": 60}}),
            ),
            entry(&test_env, "test", json!({})),
        ],
        json!({}),
    );
    let unknown = f.generate("live");
    let mut tampered = active.plaintext.expose().to_owned();
    let last = tampered.pop().unwrap();
    tampered.push(if last == '1' { '2' } else { '1' });
    // The token of a live key presented as a test key: its hash is in the
    // table, but under another environment.
    let swapped = active.plaintext.expose().replacen("_live_", "_test_", 1);
    let orders = route(json!({"abilities": "read:orders"}));
    let admin = route(json!({"abilities": "admin:write"}));
    let live_only = route(json!({"environment": "live"}));

    let cases: Vec<Case> = vec![
        (vec![], None, 401, "missing_credentials"),
        (
            vec![("authorization", "Bearer eyJhbGciOi.jwt".into())],
            None,
            401,
            "missing_credentials",
        ),
        (
            vec![("authorization", format!("Bearer {tampered}"))],
            None,
            401,
            "malformed_key",
        ),
        (
            vec![("x-api-key", "sk_live_short".into())],
            None,
            401,
            "malformed_key",
        ),
        (
            vec![("authorization", bearer(&unknown))],
            None,
            401,
            "invalid_key",
        ),
        (
            vec![("authorization", format!("Bearer {swapped}"))],
            None,
            401,
            "invalid_key",
        ),
        (
            vec![("authorization", bearer(&revoked))],
            None,
            401,
            "key_revoked",
        ),
        (
            vec![("authorization", bearer(&expired))],
            None,
            401,
            "key_expired",
        ),
        (
            vec![("authorization", bearer(&suspended))],
            None,
            403,
            "owner_suspended",
        ),
        (
            vec![("authorization", bearer(&test_env))],
            Some(&live_only),
            403,
            "environment_not_allowed",
        ),
        (
            vec![("authorization", bearer(&active))],
            Some(&admin),
            403,
            "insufficient_ability",
        ),
    ];
    for (headers, route, status, code) in cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let outcome = run(&filter, &headers, route, now);
        assert_eq!(denied(&outcome), (status, code.to_owned()), "{headers:?}");
    }

    let first = run(
        &filter,
        &[("x-api-key", limited.plaintext.expose())],
        None,
        now,
    );
    assert_eq!(first.action, HeadersAction::Continue);
    let second = run(
        &filter,
        &[("x-api-key", limited.plaintext.expose())],
        None,
        now,
    );
    assert_eq!(denied(&second), (429, "rate_limited".to_owned()));
    let retry_after: u64 = second.stream.reply.as_ref().unwrap().headers["retry-after"]
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");

    let allowed = run(
        &filter,
        &[("authorization", &bearer(&active))],
        Some(&orders),
        now,
    );
    assert_eq!(allowed.action, HeadersAction::Continue);
    assert!(allowed.stream.reply.is_none());
}

#[test]
fn an_allowed_request_carries_checks_identity_headers_and_loses_its_credentials() {
    let f = format();
    let key = f.generate("live");
    let id = uuid::Uuid::new_v4();
    let mut e = entry(
        &key,
        "live",
        json!({"abilities": ["read:orders", "users:*"], "metadata": {"tier": "gold", "plan": "x"}}),
    );
    e["id"] = json!(id);
    let (filter, _snapshot) = filter(vec![e], json!({}));
    let outcome = run(
        &filter,
        &[
            ("authorization", &bearer(&key)),
            ("x-api-key", "another"),
            ("x-keygate-owner-id", "forged"),
            ("x-keygate-shadow-decision", "forged"),
        ],
        None,
        Utc::now(),
    );
    assert_eq!(outcome.action, HeadersAction::Continue);
    let s = &outcome.stream;
    assert_eq!(s.header("x-keygate-key-id"), Some(id.to_string().as_str()));
    assert_eq!(s.header("x-keygate-owner-id"), Some("acme"));
    assert_eq!(s.header("x-keygate-environment"), Some("live"));
    assert_eq!(
        s.header("x-keygate-key-prefix"),
        Some(key.key_prefix.as_str())
    );
    assert_eq!(s.header("x-keygate-abilities"), Some("read:orders,users:*"));
    assert_eq!(s.header("x-keygate-meta-tier"), Some("gold"));
    assert_eq!(s.header("x-keygate-meta-plan"), None, "not exported");
    assert_eq!(s.header("x-keygate-shadow-decision"), None);
    assert_eq!(s.header("authorization"), None);
    assert_eq!(s.header("x-api-key"), None);
    assert!(outcome.response_headers(&filter).is_empty());
}

impl Outcome {
    /// What the filter adds to the upstream's response.
    fn response_headers(&self, filter: &FilterConfig) -> BTreeMap<String, String> {
        let mut stream = RecordingStream::default();
        filter.on_response_headers(&mut stream, &self.pending);
        stream.response_headers
    }
}

#[test]
fn rate_limit_and_sunset_headers_go_on_the_response() {
    let f = format();
    let key = f.generate("live");
    let now = Utc::now();
    let sunset = DateTime::parse_from_rfc3339("2040-01-02T03:04:05Z").unwrap();
    let (filter, _snapshot) = filter(
        vec![entry(
            &key,
            "live",
            json!({"rate_limit": {"max_attempts": 10, "decay_seconds": 60}, "revoked_at": sunset}),
        )],
        json!({}),
    );
    let outcome = run(&filter, &[("authorization", &bearer(&key))], None, now);
    assert_eq!(outcome.action, HeadersAction::Continue);
    let headers = outcome.response_headers(&filter);
    assert_eq!(headers["x-ratelimit-limit"], "10");
    assert_eq!(headers["x-ratelimit-remaining"], "9");
    assert_eq!(headers["deprecation"], "true");
    assert_eq!(headers["sunset"], "Mon, 02 Jan 2040 03:04:05 GMT");
}

#[test]
fn a_shadow_route_allows_and_reports_the_decision_it_would_have_taken() {
    let (filter, _snapshot) = filter(vec![], json!({}));
    let shadow = route(json!({"mode": "shadow"}));
    let outcome = run(
        &filter,
        &[
            ("x-api-key", format().generate("live").plaintext.expose()),
            ("x-keygate-key-id", "forged"),
        ],
        Some(&shadow),
        Utc::now(),
    );
    assert_eq!(outcome.action, HeadersAction::Continue);
    assert_eq!(
        outcome.stream.header("x-keygate-shadow-decision"),
        Some("invalid_key")
    );
    assert_eq!(outcome.stream.header("x-keygate-key-id"), None);
    assert_eq!(outcome.stream.header("x-api-key"), None);
}

#[test]
fn a_foreign_bearer_passes_without_identity_when_allowed() {
    let (filter, _snapshot) = filter(vec![], json!({"foreign_bearer": "allow"}));
    let outcome = run(
        &filter,
        &[("authorization", "Bearer eyJ.jwt")],
        None,
        Utc::now(),
    );
    assert_eq!(outcome.action, HeadersAction::Continue);
    assert_eq!(
        outcome.stream.header("authorization"),
        Some("Bearer eyJ.jwt")
    );
    assert_eq!(outcome.stream.header("x-keygate-key-id"), None);
}

#[test]
fn an_ip_allow_list_is_checked_against_the_client_address_envoy_has() {
    let f = format();
    let office = f.generate("live");
    let (filter, _snapshot) = filter(
        vec![entry(
            &office,
            "live",
            json!({"allowed_cidrs": ["10.0.0.0/8", "2001:db8::/32"]}),
        )],
        json!({}),
    );
    let decide_from = |client: Option<&str>| {
        let mut stream = RecordingStream::with(&[("authorization", &bearer(&office))]);
        stream.client = client.map(|ip| ip.parse().unwrap());
        let mut pending = StreamState::default();
        let action = filter.on_request_headers(&mut stream, None, Utc::now(), &mut pending);
        Outcome {
            action,
            stream,
            pending,
        }
    };
    for inside in ["10.1.2.3", "2001:db8::7"] {
        let outcome = decide_from(Some(inside));
        assert_eq!(outcome.action, HeadersAction::Continue, "{inside}");
        assert!(outcome.stream.header("x-keygate-key-id").is_some());
    }
    for outside in [Some("192.168.1.1"), Some("2001:db9::1"), None] {
        assert_eq!(
            denied(&decide_from(outside)),
            (403, "ip_not_allowed".to_owned()),
            "{outside:?}"
        );
    }
}

#[test]
fn dynamic_metadata_describes_an_allowed_key_when_asked_for() {
    let f = format();
    let reader = f.generate("live");
    let entries = vec![entry(
        &reader,
        "live",
        json!({"abilities": ["read:orders"], "metadata": {"tier": "gold", "plan": "pro"}}),
    )];
    let headers = [("authorization", bearer(&reader))];
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();

    let (off, _snapshot) = filter(entries.clone(), json!({}));
    let outcome = run(&off, &headers, None, Utc::now());
    assert_eq!(outcome.action, HeadersAction::Continue);
    assert!(outcome.stream.metadata.is_empty(), "off by default");

    let (on, _snapshot) = filter(entries, json!({"dynamic_metadata": true}));
    let outcome = run(&on, &headers, None, Utc::now());
    assert_eq!(outcome.action, HeadersAction::Continue);
    let seen = |ns: &str, key: &str| {
        outcome
            .stream
            .metadata
            .get(&(ns.to_owned(), key.to_owned()))
            .cloned()
    };
    assert_eq!(
        seen("keygate", "key_id"),
        outcome.stream.header("x-keygate-key-id").map(str::to_owned)
    );
    assert_eq!(seen("keygate", "owner_id").as_deref(), Some("acme"));
    assert_eq!(seen("keygate", "environment").as_deref(), Some("live"));
    assert_eq!(
        seen("keygate", "key_prefix"),
        Some(reader.key_prefix.clone())
    );
    assert_eq!(seen("keygate", "abilities").as_deref(), Some("read:orders"));
    assert_eq!(seen("keygate.metadata", "tier").as_deref(), Some("gold"));
    assert_eq!(seen("keygate.metadata", "plan").as_deref(), Some("pro"));

    let denied_outcome = run(
        &on,
        &[("authorization", "Bearer sk_live_nope")],
        None,
        Utc::now(),
    );
    assert!(
        denied_outcome.stream.metadata.is_empty(),
        "nothing for a denial"
    );
}

#[test]
fn a_key_with_credits_is_not_decided_in_the_proxy() {
    let key = format().generate("live");
    let (filter, _snapshot) = filter(
        vec![entry(&key, "live", json!({"has_credits": true}))],
        json!({}),
    );
    let outcome = run(
        &filter,
        &[("authorization", &bearer(&key))],
        None,
        Utc::now(),
    );
    assert_eq!(unavailable(outcome).details, "keygate_credits_not_in_proxy");
}

/// The 503 `unavailable` local reply of a request the filter cannot decide.
fn unavailable(outcome: Outcome) -> LocalReply {
    assert_eq!(outcome.action, HeadersAction::Stop);
    let reply = outcome.stream.reply.expect("a local reply");
    assert_eq!(reply.status, 503);
    assert_eq!(reply.body["error"]["code"], "unavailable");
    reply
}

#[test]
fn bad_configs_are_refused_with_the_reason_and_never_a_hash() {
    let err = FilterConfig::new(b"not-keygate", b"{}", no_log).unwrap_err();
    assert!(err.to_string().contains("not-keygate"), "{err}");
    let err =
        FilterConfig::new(FILTER_NAME.as_bytes(), b"{\"snapshot_path\": 1}", no_log).unwrap_err();
    assert!(err.to_string().contains("filter_config"), "{err}");

    let mut partial = tempfile::NamedTempFile::new().unwrap();
    partial
        .write_all(br#"{"complete": false, "keys": []}"#)
        .unwrap();
    let config = json!({"snapshot_path": partial.path()}).to_string();
    let err = FilterConfig::new(FILTER_NAME.as_bytes(), config.as_bytes(), no_log).unwrap_err();
    assert!(err.to_string().contains("partial"), "{err}");

    let key = format().generate("live");
    let hash = hex::encode(key.hash.as_bytes());
    let mut duplicate = tempfile::NamedTempFile::new().unwrap();
    let body = json!({"complete": true, "keys": [entry(&key, "live", json!({})), entry(&key, "live", json!({}))]});
    duplicate.write_all(body.to_string().as_bytes()).unwrap();
    let config = json!({"snapshot_path": duplicate.path()}).to_string();
    let err = FilterConfig::new(FILTER_NAME.as_bytes(), config.as_bytes(), no_log).unwrap_err();
    assert!(err.to_string().contains("already"), "{err}");
    assert!(!err.to_string().contains(&hash), "{err}");

    let refused = |config: Value| {
        FilterConfig::new(
            FILTER_NAME.as_bytes(),
            config.to_string().as_bytes(),
            no_log,
        )
        .unwrap_err()
        .to_string()
    };
    assert!(refused(json!({})).contains("no key table"));
    assert!(refused(json!({"feed": {"address": "not a uri"}})).contains("address"));
    assert!(refused(json!({"feed": {"address": "https://127.0.0.1:1"}})).contains("ca_file"));
    let err = refused(
        json!({"feed": {"address": "http://127.0.0.1:1", "token_file": "/nonexistent/token"}}),
    );
    assert!(err.contains("token_file"), "{err}");
}

#[test]
fn before_the_feed_s_first_snapshot_a_key_is_unavailable_not_invalid() {
    // Port 1 on loopback refuses connections: the feed never answers.
    let config = json!({"feed": {"address": "http://127.0.0.1:1"}}).to_string();
    let filter = FilterConfig::new(FILTER_NAME.as_bytes(), config.as_bytes(), no_log).unwrap();
    let key = format().generate("live");
    let outcome = run(
        &filter,
        &[("x-api-key", key.plaintext.expose())],
        None,
        Utc::now(),
    );
    assert_eq!(unavailable(outcome).details, "keygate_no_key_table");
    // No credential needs no table.
    let outcome = run(&filter, &[], None, Utc::now());
    assert_eq!(outcome.stream.reply.unwrap().status, 401);
}

#[test]
fn each_decision_is_counted_once_under_its_code() {
    let mut names = Vec::new();
    let counters = DecisionCounters::define(|name| {
        names.push(name.to_owned());
        Some(CounterId(names.len() - 1))
    })
    .unwrap();
    let key = format().generate("live");
    let (filter, _snapshot) = filter(vec![entry(&key, "live", json!({}))], json!({}));
    let filter = filter.with_counters(counters);
    let counted = |headers: &[(&str, &str)], route: Option<&RouteSettings>| -> Vec<String> {
        run(&filter, headers, route, Utc::now())
            .stream
            .counted
            .iter()
            .map(|id| names[id.0].clone())
            .collect()
    };
    assert_eq!(
        counted(&[("authorization", &bearer(&key))], None),
        ["decisions.allowed"]
    );
    assert_eq!(counted(&[], None), ["decisions.missing_credentials"]);
    let shadow = route(json!({"mode": "shadow", "abilities": "x:y"}));
    assert_eq!(
        counted(&[("authorization", &bearer(&key))], Some(&shadow)),
        ["decisions.insufficient_ability", "shadow"]
    );
}

/// A filter that asks keygate (`lookup`) about keys with credits, and a
/// key with credits in its table. What the table can decide (a missing
/// ability, say) is still decided without asking.
fn asking_filter(settings: Value) -> (FilterConfig, tempfile::NamedTempFile, IssuedKey) {
    let key = format().generate("live");
    let mut config = json!({"lookup": {"cluster": "keygate_forward_auth"}});
    config
        .as_object_mut()
        .unwrap()
        .extend(settings.as_object().unwrap().clone());
    let (filter, snapshot) = filter(
        vec![entry(
            &key,
            "live",
            json!({"has_credits": true, "abilities": ["orders:write"]}),
        )],
        config,
    );
    (filter, snapshot, key)
}

/// Asks about `key` as a client of `route` would, with forged identity
/// headers.
fn ask(filter: &FilterConfig, key: &IssuedKey, route: Option<&RouteSettings>) -> Outcome {
    let bearer = bearer(key);
    let mut stream = RecordingStream::with(&[
        (":method", "POST"),
        (":path", "/orders?page=2"),
        ("authorization", &bearer),
        ("x-keygate-key-id", "forged"),
        ("x-keygate-meta-plan", "forged"),
    ]);
    stream.client = Some("10.1.2.3".parse().unwrap());
    let mut pending = StreamState::default();
    let action = filter.on_request_headers(&mut stream, route, Utc::now(), &mut pending);
    Outcome {
        action,
        stream,
        pending,
    }
}

/// keygate's answer, with its `:status` as Envoy lists it.
fn answer(status: u16, headers: &[(&str, &str)], body: &str) -> Answer {
    let mut all = vec![(":status".to_owned(), status.to_string())];
    all.extend(headers.iter().map(|(n, v)| (n.to_string(), v.to_string())));
    Answer {
        status,
        headers: all,
        body: body.as_bytes().to_vec(),
    }
}

/// Asks about `key`, then applies `answer` as the callout hook does.
fn ask_and_answer(
    filter: &FilterConfig,
    key: &IssuedKey,
    answer: Option<&Answer>,
) -> (AnswerApplied, RecordingStream) {
    let Outcome {
        action,
        mut stream,
        mut pending,
    } = ask(filter, key, None);
    assert_eq!(action, HeadersAction::Wait);
    let asked = pending.take_asked().expect("a question waits");
    assert!(
        pending.take_asked().is_none(),
        "a question is answered once"
    );
    let applied = filter.on_lookup_answer(&mut stream, asked, answer);
    (applied, stream)
}

fn strings(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

#[test]
fn a_key_the_table_cannot_decide_is_asked_of_keygate_with_what_forward_auth_reads() {
    let (filter, _snapshot, key) = asking_filter(json!({}));
    let needs = route(json!({"abilities": "orders:write", "environment": "live"}));
    let outcome = ask(&filter, &key, Some(&needs));
    assert_eq!(outcome.action, HeadersAction::Wait);
    assert!(outcome.stream.reply.is_none());
    let [call] = &outcome.stream.calls[..] else {
        panic!("one call expected: {:?}", outcome.stream.calls)
    };
    assert_eq!(call.cluster, "keygate_forward_auth");
    assert_eq!(call.timeout_ms, 1000);
    let bearer = bearer(&key);
    let expected = strings(&[
        (":method", "GET"),
        (":path", "/"),
        (":authority", "keygate"),
        ("x-original-method", "POST"),
        ("x-original-uri", "/orders?page=2"),
        ("x-real-ip", "10.1.2.3"),
        ("keygate-require-abilities", "orders:write"),
        ("keygate-require-environment", "live"),
        ("authorization", &bearer),
    ]);
    assert_eq!(call.headers, expected);

    let shadow = route(json!({"mode": "shadow"}));
    let outcome = ask(&filter, &key, Some(&shadow));
    assert_eq!(outcome.stream.calls[0].headers["keygate-mode"], "shadow");
}

#[test]
fn keygate_s_allowance_carries_its_identity_upstream_and_its_limits_to_the_client() {
    let (filter, _snapshot, key) = asking_filter(json!({"dynamic_metadata": true}));
    let allowed = answer(
        200,
        &[
            ("x-keygate-key-id", "0190-real"),
            ("x-keygate-owner-id", "acme"),
            ("x-keygate-meta-tier", "gold"),
            ("x-ratelimit-remaining", "9"),
            ("server", "keygate"),
            (
                "x-envoy-auth-headers-to-remove",
                "authorization, x-keygate-meta-plan, x-keygate-abilities",
            ),
        ],
        "",
    );
    let (applied, stream) = ask_and_answer(&filter, &key, Some(&allowed));
    assert_eq!(
        applied,
        AnswerApplied::Continue(vec![("x-ratelimit-remaining", "9".to_owned())])
    );
    assert!(stream.reply.is_none());
    let upstream: BTreeMap<String, String> = stream
        .request
        .iter()
        .map(|(n, v)| (n.clone(), String::from_utf8(v.clone()).unwrap()))
        .collect();
    // Forged headers gone (keygate named x-keygate-meta-plan, which the
    // filter's own metadata_headers lack), the credential stripped, and
    // nothing of keygate's answer but its identity.
    assert_eq!(
        upstream,
        strings(&[
            (":method", "POST"),
            (":path", "/orders?page=2"),
            ("x-keygate-key-id", "0190-real"),
            ("x-keygate-owner-id", "acme"),
            ("x-keygate-meta-tier", "gold"),
        ])
    );
    let metadata = |namespace: &str, key: &str| {
        stream
            .metadata
            .get(&(namespace.to_owned(), key.to_owned()))
            .map(String::as_str)
    };
    assert_eq!(metadata("keygate", "key_id"), Some("0190-real"));
    assert_eq!(metadata("keygate", "owner_id"), Some("acme"));
    assert_eq!(metadata("keygate.metadata", "tier"), Some("gold"));
}

#[test]
fn a_shadow_answer_removes_forged_identity_and_reports_keygate_s_decision() {
    let (filter, _snapshot, key) = asking_filter(json!({}));
    let shadowed = answer(
        200,
        &[("x-keygate-shadow-decision", "credits_exhausted")],
        "",
    );
    let (applied, stream) = ask_and_answer(&filter, &key, Some(&shadowed));
    assert_eq!(applied, AnswerApplied::Continue(vec![]));
    assert_eq!(
        stream.header("x-keygate-shadow-decision"),
        Some("credits_exhausted")
    );
    assert_eq!(
        stream.header("x-keygate-key-id"),
        None,
        "the forged one removed"
    );
}

#[test]
fn keygate_s_denial_is_the_client_s_answer_and_no_answer_is_a_503() {
    let (filter, _snapshot, key) = asking_filter(json!({}));
    let body =
        r#"{"error":{"code":"credits_exhausted","message":"This API key has no credits left."}}"#;
    let exhausted = answer(
        429,
        &[("content-type", "application/json"), ("retry-after", "30")],
        body,
    );
    let (applied, stream) = ask_and_answer(&filter, &key, Some(&exhausted));
    assert_eq!(applied, AnswerApplied::Stop);
    let reply = stream.reply.unwrap();
    assert_eq!(reply.status, 429);
    assert_eq!(reply.body["error"]["code"], "credits_exhausted");
    assert_eq!(reply.headers["retry-after"], "30");
    assert_eq!(reply.details, "keygate_credits_exhausted");

    // Envoy's own answer for an unreachable or slow keygate, a 200 from a
    // cluster that is not keygate's forward-auth, and a reset.
    let timeout = answer(
        504,
        &[("content-type", "text/plain")],
        "upstream request timeout",
    );
    let not_keygate = answer(200, &[("content-type", "text/html")], "<p>welcome</p>");
    for failed in [Some(&timeout), Some(&not_keygate), None] {
        let (applied, stream) = ask_and_answer(&filter, &key, failed);
        assert_eq!(applied, AnswerApplied::Stop);
        let reply = stream.reply.as_ref().expect("a local reply");
        assert_eq!(reply.status, 503);
        assert_eq!(reply.body["error"]["code"], "unavailable");
        assert_eq!(reply.details, "keygate_lookup_failed");
        assert_eq!(
            stream.header("x-keygate-key-id"),
            Some("forged"),
            "no allowance"
        );
    }
}

#[test]
fn a_lookup_that_cannot_start_or_has_no_client_address_is_a_503_and_never_asked_twice() {
    let (filter, _snapshot, key) = asking_filter(json!({}));
    let mut names = Vec::new();
    let counters = DecisionCounters::define(|name| {
        names.push(name.to_owned());
        Some(CounterId(names.len() - 1))
    })
    .unwrap();
    let filter = filter.with_counters(counters);
    let bearer = bearer(&key);
    for (client, refused, details) in [
        (
            Some("10.1.2.3"),
            Some("keygate_lookup_cluster_not_found"),
            "keygate_lookup_cluster_not_found",
        ),
        (None, None, "keygate_lookup_without_client_address"),
    ] {
        let mut stream = RecordingStream::with(&[("authorization", &bearer)]);
        stream.client = client.map(|ip| ip.parse().unwrap());
        stream.call_refused = refused;
        let mut pending = StreamState::default();
        let action = filter.on_request_headers(&mut stream, None, Utc::now(), &mut pending);
        assert!(pending.take_asked().is_none());
        let counted: Vec<_> = stream.counted.iter().map(|id| &names[id.0]).collect();
        assert_eq!(counted, ["lookups", "lookup_failures"], "{details}");
        let reply = unavailable(Outcome {
            action,
            stream,
            pending,
        });
        assert_eq!(reply.details, details);
    }

    // A key the complete table does not hold is never asked about.
    let stranger = format().generate("live");
    let outcome = ask(&filter, &stranger, None);
    assert_eq!(denied(&outcome), (401, "invalid_key".to_owned()));
    assert!(outcome.stream.calls.is_empty());
}

#[test]
fn before_the_first_table_every_key_is_asked_of_keygate() {
    let config = json!({
        "feed": {"address": "http://127.0.0.1:1"},
        "lookup": {"cluster": "keygate", "authority": "keygate.internal", "timeout_ms": 250},
    })
    .to_string();
    let filter = FilterConfig::new(FILTER_NAME.as_bytes(), config.as_bytes(), no_log).unwrap();
    let key = format().generate("live");
    let outcome = ask(&filter, &key, None);
    assert_eq!(outcome.action, HeadersAction::Wait);
    assert_eq!(outcome.stream.calls[0].timeout_ms, 250);
    assert_eq!(
        outcome.stream.calls[0].headers[":authority"],
        "keygate.internal"
    );
}

#[test]
fn a_lookup_without_a_cluster_or_with_no_timeout_is_refused() {
    for (lookup, named) in [
        (json!({"cluster": ""}), "lookup.cluster"),
        (
            json!({"cluster": "k", "timeout_ms": 0}),
            "lookup.timeout_ms",
        ),
    ] {
        let config = json!({"feed": {"address": "http://127.0.0.1:1"}, "lookup": lookup});
        let err = FilterConfig::new(
            FILTER_NAME.as_bytes(),
            config.to_string().as_bytes(),
            no_log,
        )
        .unwrap_err();
        assert!(err.to_string().contains(named), "{err}");
    }
}

/// Only keygate's JSON denial is passed on, with the headers a client
/// needs; a body that is not text or a status that is no decision is no
/// answer.
#[test]
fn keygate_s_denial_passes_on_with_only_the_headers_a_client_needs() {
    let body = r#"{"error":{"code":"credits_exhausted","message":"m"}}"#;
    let denied = answer(
        429,
        &[
            ("content-type", "application/json"),
            ("retry-after", "60"),
            ("x-keygate-key-id", "forged"),
        ],
        body,
    );
    assert_eq!(
        denied.verdict(),
        Verdict::Deny {
            status: 429,
            headers: vec![("content-type", "application/json"), ("retry-after", "60")],
            body,
            details: "keygate_credits_exhausted".to_owned(),
        }
    );
    let mut not_text = answer(401, &[("content-type", "application/json")], "");
    not_text.body = vec![0xff, 0xfe];
    assert_eq!(not_text.verdict(), Verdict::NoAnswer);
    assert_eq!(
        answer(302, &[("content-type", "application/json")], "{}").verdict(),
        Verdict::NoAnswer
    );
}

#[test]
fn an_imported_key_is_asked_of_keygate_or_unavailable_never_judged_by_our_format() {
    let imported = "lk_0123456789abcdefghijklmnopqrstuvwxyzABCD";
    let headers = [("authorization", format!("Bearer {imported}"))];
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();

    let (without, _snapshot) = filter(vec![], json!({"imported_prefixes": ["lk_"]}));
    let outcome = run(&without, &headers, None, Utc::now());
    assert_eq!(
        unavailable(outcome).details,
        "keygate_imported_key_not_in_proxy"
    );

    let (asking, _snapshot) = filter(
        vec![],
        json!({"imported_prefixes": ["lk_"], "lookup": {"cluster": "keygate"}}),
    );
    let mut stream = RecordingStream::with(&headers);
    stream.client = Some("10.1.2.3".parse().unwrap());
    let mut pending = StreamState::default();
    let action = asking.on_request_headers(&mut stream, None, Utc::now(), &mut pending);
    assert_eq!(action, HeadersAction::Wait);
    assert_eq!(
        stream.calls[0].headers["authorization"],
        format!("Bearer {imported}")
    );

    // A prefix that keygate's own keys share changes nothing for them: they
    // parse, and are decided from the table, as in Check.
    let key = format().generate("live");
    let (overlapping, _snapshot) = filter(
        vec![entry(&key, "live", json!({}))],
        json!({"imported_prefixes": ["sk_"], "lookup": {"cluster": "keygate"}}),
    );
    let outcome = run(
        &overlapping,
        &[("authorization", &bearer(&key))],
        None,
        Utc::now(),
    );
    assert_eq!(outcome.action, HeadersAction::Continue);
    assert!(outcome.stream.calls.is_empty());

    // Without the prefix configured it is a foreign bearer, as before.
    let (plain, _snapshot) = filter(vec![], json!({}));
    let outcome = run(&plain, &headers, None, Utc::now());
    assert_eq!(denied(&outcome), (401, "missing_credentials".to_owned()));

    let config = json!({"snapshot_path": "/nonexistent", "imported_prefixes": [""]});
    let err = FilterConfig::new(
        FILTER_NAME.as_bytes(),
        config.to_string().as_bytes(),
        no_log,
    )
    .unwrap_err();
    assert!(err.to_string().contains("imported_prefixes"), "{err}");
}
