//! The filter's behaviour, independent of how Envoy calls it: Check's
//! decision (`keygate::domain::decide`, keygate's key format, credential
//! rules and per-key rate limiter) against the in-process [`KeyTable`], and
//! Check's answers (`keygate::answer`): the same statuses, JSON bodies,
//! identity headers, credential removal and rate-limit headers.

use std::{fmt, net::IpAddr, sync::Arc};

use chrono::{DateTime, Utc};
use keygate::{
    answer::{
        denial_body, denial_headers, identity_values, rate_headers, sunset_headers,
        MetadataHeaders, HEADER_SHADOW_DECISION, IDENTITY_FIELDS, IDENTITY_HEADERS,
        META_HEADER_PREFIX,
    },
    authz::{
        credential, is_imported_key, rate_decision, CheckInput, CredentialSource, ForeignBearer,
        NotUtf8, RateHeaders,
    },
    domain::{
        decide, CheckKey, DenyReason, KeyFormat, KeyParseError, RateLimit, RouteRequirements,
    },
    ratelimit::RateLimiters,
};

use crate::{
    feed::{Log, SharedFeed},
    lookup::{self, Answer, LookupSettings, Question, Verdict},
    settings::{FilterSettings, RouteSettings, KEY_METADATA_NAMESPACE, METADATA_NAMESPACE},
    table::{KeyTable, Lookup, SharedTable, TableError},
};

/// The `filter_name` in Envoy's `DynamicModuleFilter` config that selects
/// this filter.
pub const FILTER_NAME: &str = "keygate";

/// Keys whose rate-limit state is kept, as Check's default
/// (`KEYGATE_RATE_LIMITER_CAPACITY`).
const LIMITER_CAPACITY: u64 = 100_000;

/// What the filter sees of one HTTP stream: the request headers, and the
/// means to answer in Envoy's place.
pub trait Stream {
    fn request_header(&self, name: &str) -> Option<&[u8]>;
    /// The client's address as Envoy has it (`source.address`): the
    /// downstream connection's peer, or the address Envoy's own
    /// `use_remote_address` / `xff_num_trusted_hops` settings chose. Keys
    /// with an IP allow-list are checked against it; `None` denies them.
    fn client_address(&self) -> Option<IpAddr>;
    fn set_request_header(&mut self, name: &str, value: &str);
    /// Adds a header the request does not have: cheaper for Envoy than
    /// [`Self::set_request_header`], which first removes any of that name.
    fn add_request_header(&mut self, name: &str, value: &str);
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
    /// Sets `key` to `value` in the stream's dynamic metadata under
    /// `namespace`.
    fn set_metadata(&mut self, namespace: &str, key: &str, value: &str);
    /// Adds one to a counter [`DecisionCounters::define`] made.
    fn increment_counter(&mut self, id: CounterId);
    /// Starts an HTTP request to `cluster` (an Envoy cluster) whose answer
    /// comes to [`FilterConfig::on_lookup_answer`]; `Err` names why it
    /// could not start.
    fn call_out(
        &mut self,
        cluster: &str,
        headers: &[(&str, &[u8])],
        timeout_ms: u64,
    ) -> Result<(), &'static str>;
}

/// A counter in Envoy's stats, as the filter config defined it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CounterId(pub usize);

/// One counter per decision code, named like Check's metrics
/// (`keygate_check_decisions_total{code}`, `keygate_check_shadow_total`):
/// `decisions.<code>`, `shadow`, the requests it cannot decide,
/// `credits_unavailable`, `table_unavailable` and `imported_unavailable`, `usage_dropped`
/// (Check's `keygate_usage_dropped_total`), and `lookups` and
/// `lookup_failures` (requests that needed keygate, and those it did not
/// answer: keygate counts its own decisions), under the filter's
/// `metrics_namespace` in Envoy's stats.
#[derive(Debug, Clone)]
pub struct DecisionCounters {
    allowed: CounterId,
    /// Indexed by [`DenyReason::index`].
    denied: [CounterId; DenyReason::ALL_CODES.len()],
    shadow: CounterId,
    credits_unavailable: CounterId,
    table_unavailable: CounterId,
    imported_unavailable: CounterId,
    usage_dropped: CounterId,
    lookups: CounterId,
    lookup_failures: CounterId,
}

impl DecisionCounters {
    /// Defines every counter with `define(name)`, or none if one fails.
    pub fn define(mut define: impl FnMut(&str) -> Option<CounterId>) -> Option<Self> {
        let mut denied = [CounterId(0); DenyReason::ALL_CODES.len()];
        for (slot, code) in denied.iter_mut().zip(DenyReason::ALL_CODES) {
            *slot = define(&format!("decisions.{code}"))?;
        }
        Some(Self {
            allowed: define("decisions.allowed")?,
            denied,
            shadow: define("shadow")?,
            credits_unavailable: define("credits_unavailable")?,
            table_unavailable: define("table_unavailable")?,
            imported_unavailable: define("imported_unavailable")?,
            usage_dropped: define("usage_dropped")?,
            lookups: define("lookups")?,
            lookup_failures: define("lookup_failures")?,
        })
    }

    fn decision(&self, denial: Option<&DenyReason>) -> CounterId {
        match denial {
            Some(reason) => self.denied[reason.index()],
            None => self.allowed,
        }
    }
}

/// Whether Envoy goes on with the request after the headers hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadersAction {
    Continue,
    /// The filter answered with a local reply.
    Stop,
    /// keygate has been asked ([`Stream::call_out`]); the request, body
    /// included, waits for [`FilterConfig::on_lookup_answer`].
    Wait,
}

/// Why Envoy's filter config was refused.
#[derive(Debug)]
pub enum ConfigError {
    UnknownFilter(String),
    Json(String),
    Setting(String),
    Table(TableError),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownFilter(name) => write!(
                f,
                "unknown filter_name {name:?}: this module provides {FILTER_NAME:?}"
            ),
            Self::Json(e) => write!(f, "filter_config is not valid: {e}"),
            Self::Setting(e) => f.write_str(e),
            Self::Table(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ConfigError {}

/// What the filter keeps for one stream between hooks: the response headers
/// an allowed request gets once the upstream answers (rate-limit state,
/// `Deprecation`/`Sunset`; empty and unallocated for most requests), and,
/// while keygate is being asked, the question.
#[derive(Debug, Default)]
pub struct StreamState {
    response_headers: Vec<(&'static str, String)>,
    /// From the question to keygate until its answer.
    asked: Option<Asked>,
}

impl StreamState {
    /// The question waiting for keygate's answer, if any; taken once.
    pub fn take_asked(&mut self) -> Option<Asked> {
        self.asked.take()
    }

    pub fn add_response_headers(&mut self, headers: Vec<(&'static str, String)>) {
        self.response_headers.extend(headers);
    }
}

/// A request waiting for keygate's answer: where its credential came from,
/// for the answer to strip it.
#[derive(Debug, Clone, Copy)]
pub struct Asked {
    credential: Option<CredentialSource>,
}

/// What to do with a request once keygate's answer has been applied.
#[derive(Debug, PartialEq, Eq)]
pub enum AnswerApplied {
    /// Upstream, with these response headers for the client's answer.
    Continue(Vec<(&'static str, String)>),
    /// A local reply was sent.
    Stop,
}

/// A denial's status, headers, body and Envoy response details, rendered
/// once at config time (the rate-limited one carries a per-request delay).
struct Denial {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
    details: String,
}

impl Denial {
    fn of(reason: DenyReason) -> Self {
        Self {
            status: reason.http_status(),
            headers: denial_headers(reason),
            body: denial_body(reason),
            details: format!("keygate_{}", reason.code()),
        }
    }
}

/// What this filter cannot decide in the proxy: a 503, as Check's
/// `unavailable`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Undecidable {
    /// Spending a key's credits needs keygate's database.
    Credits,
    /// No complete key table has arrived yet (feed not yet answered, no
    /// snapshot file).
    NoTable,
    /// A key imported from another system (`imported_prefixes`): found by
    /// the hash of the whole string, which the table does not hold.
    Imported,
}

impl Undecidable {
    fn body(self) -> &'static str {
        match self {
            Self::Credits => {
                r#"{"error":{"code":"unavailable","message":"This API key has credits, which this proxy cannot spend; retry through keygate's own Check."}}"#
            }
            Self::NoTable => {
                r#"{"error":{"code":"unavailable","message":"The key table has not arrived from keygate yet; retry shortly."}}"#
            }
            Self::Imported => {
                r#"{"error":{"code":"unavailable","message":"This API key was imported from another system, which only keygate's own Check decides."}}"#
            }
        }
    }

    fn details(self) -> &'static str {
        match self {
            Self::Credits => "keygate_credits_not_in_proxy",
            Self::NoTable => "keygate_no_key_table",
            Self::Imported => "keygate_imported_key_not_in_proxy",
        }
    }

    fn counter(self, counters: &DecisionCounters) -> CounterId {
        match self {
            Self::Credits => counters.credits_unavailable,
            Self::NoTable => counters.table_unavailable,
            Self::Imported => counters.imported_unavailable,
        }
    }
}

/// One Envoy filter config: shared by every stream it filters, on every
/// worker thread.
pub struct FilterConfig {
    format: KeyFormat,
    foreign_bearer: ForeignBearer,
    authorization_header: String,
    api_key_header: String,
    strip_credential: bool,
    metadata: MetadataHeaders,
    dynamic_metadata: bool,
    default_rate_limit: Option<RateLimit>,
    table: Arc<SharedTable>,
    /// The feed that keeps `table` current, shared with the other configs
    /// that name it; `None` without one.
    feed: Option<Arc<SharedFeed>>,
    limiters: RateLimiters,
    /// Indexed by [`DenyReason::index`].
    denials: Vec<Denial>,
    counters: Option<DecisionCounters>,
    lookup: Option<LookupSettings>,
    /// `KEYGATE_IMPORTED_PREFIXES`: keys with these prefixes are keygate's
    /// to decide.
    imported_prefixes: Vec<String>,
}

impl fmt::Debug for FilterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FilterConfig")
            .field("format", &self.format)
            .field("keys", &self.table.key_count())
            .field("feed", &self.feed.is_some())
            .finish_non_exhaustive()
    }
}

/// The result of evaluating a credential, before shadow mode is applied
/// (as in Check).
struct Evaluation {
    decision: Result<Option<RateHeaders>, DenyReason>,
    key: Option<Arc<CheckKey>>,
    credential: Option<CredentialSource>,
    undecidable: Option<Undecidable>,
}

impl FilterConfig {
    /// `log` is where the key feed, if any, reports (Envoy's log).
    pub fn new(name: &[u8], config: &[u8], log: Log) -> Result<Self, ConfigError> {
        if name != FILTER_NAME.as_bytes() {
            return Err(ConfigError::UnknownFilter(
                String::from_utf8_lossy(name).into_owned(),
            ));
        }
        let settings: FilterSettings =
            serde_json::from_slice(config).map_err(|e| ConfigError::Json(e.to_string()))?;
        Self::from_settings(settings, log)
    }

    pub fn from_settings(settings: FilterSettings, log: Log) -> Result<Self, ConfigError> {
        let format = settings
            .key_format()
            .map_err(|e| ConfigError::Setting(e.to_string()))?;
        for name in &settings.metadata_headers {
            let usable = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !usable {
                return Err(ConfigError::Setting(format!(
                    "metadata_headers: {name:?} cannot be part of a header name \
                     (letters, digits, - and _ only)"
                )));
            }
        }
        if let Some(lookup) = &settings.lookup {
            lookup.validate().map_err(ConfigError::Setting)?;
        }
        if settings.imported_prefixes.iter().any(String::is_empty) {
            return Err(ConfigError::Setting(
                "imported_prefixes: an empty prefix would take every key for an imported one"
                    .into(),
            ));
        }
        if settings.snapshot_path.is_none() && settings.feed.is_none() {
            return Err(ConfigError::Setting(
                "no key table: give snapshot_path, feed, or both".into(),
            ));
        }
        let loaded = settings
            .snapshot_path
            .as_deref()
            .map(KeyTable::load)
            .transpose()
            .map_err(ConfigError::Table)?;
        let feed = settings
            .feed
            .as_ref()
            .map(|feed| SharedFeed::get_or_start(feed, log))
            .transpose()
            .map_err(|e| ConfigError::Setting(e.to_string()))?;
        let table = match (&feed, loaded) {
            // The file stands in only until the feed's first snapshot.
            (Some(feed), Some(loaded)) => {
                feed.table.fill(loaded);
                Arc::clone(&feed.table)
            }
            (Some(feed), None) => Arc::clone(&feed.table),
            (None, loaded) => Arc::new(SharedTable::new(loaded)),
        };
        Ok(Self {
            format,
            foreign_bearer: settings.foreign_bearer.into(),
            authorization_header: settings.authorization_header.to_ascii_lowercase(),
            api_key_header: settings.api_key_header.to_ascii_lowercase(),
            strip_credential: settings.strip_credential,
            metadata: MetadataHeaders::new(&settings.metadata_headers),
            dynamic_metadata: settings.dynamic_metadata,
            default_rate_limit: settings.default_rate_limit.map(RateLimit::from),
            table,
            feed,
            limiters: RateLimiters::new(LIMITER_CAPACITY),
            denials: DenyReason::one_of_each(0).map(Denial::of).into(),
            counters: None,
            lookup: settings.lookup,
            imported_prefixes: settings.imported_prefixes,
        })
    }

    /// Counts every decision in Envoy's stats.
    pub fn with_counters(mut self, counters: DecisionCounters) -> Self {
        self.counters = Some(counters);
        self
    }

    fn count(&self, stream: &mut impl Stream, counter: impl Fn(&DecisionCounters) -> CounterId) {
        if let Some(counters) = &self.counters {
            stream.increment_counter(counter(counters));
        }
    }

    /// Decides a request from its headers, as Check would; answers a denial
    /// itself and prepares an allowed request for upstream.
    pub fn on_request_headers(
        &self,
        stream: &mut impl Stream,
        route: Option<&RouteSettings>,
        now: DateTime<Utc>,
        pending: &mut StreamState,
    ) -> HeadersAction {
        let requirements = route.map(RouteSettings::requirements).unwrap_or_default();
        let evaluation = self.evaluate(&*stream, &requirements, now);
        if let Some(undecidable) = evaluation.undecidable {
            if let Some(lookup) = &self.lookup {
                return self.ask_keygate(
                    stream,
                    lookup,
                    &requirements,
                    evaluation.credential,
                    pending,
                );
            }
            self.count(stream, |c| undecidable.counter(c));
            stream.send_local_reply(
                503,
                &[("content-type", "application/json")],
                undecidable.body(),
                undecidable.details(),
            );
            return HeadersAction::Stop;
        }
        let code = match &evaluation.decision {
            Ok(_) => "allowed",
            Err(reason) => reason.code(),
        };
        self.count(stream, |c| c.decision(evaluation.decision.as_ref().err()));
        let usage = self.feed.as_ref().and_then(|feed| feed.usage.as_ref());
        if let (Some(usage), Some(key)) = (usage, &evaluation.key) {
            if !usage.record(&*stream, key.id, now, code) {
                self.count(stream, |c| c.usage_dropped);
            }
        }
        match evaluation.decision {
            Ok(rate) => {
                let sunset = evaluation
                    .key
                    .as_ref()
                    .and_then(|key| key.revoked_at.filter(|at| *at > now));
                self.allow(
                    stream,
                    evaluation.key.as_deref(),
                    evaluation.credential,
                    requirements.shadow.then_some(code),
                );
                if let Some(rate) = rate {
                    pending.response_headers.extend(rate_headers(rate));
                }
                if let Some(sunset) = sunset {
                    pending.response_headers.extend(sunset_headers(sunset));
                }
                HeadersAction::Continue
            }
            Err(_) if requirements.shadow => {
                self.count(stream, |c| c.shadow);
                self.allow(stream, None, evaluation.credential, Some(code));
                HeadersAction::Continue
            }
            Err(reason) => {
                self.deny(stream, reason);
                HeadersAction::Stop
            }
        }
    }

    /// Adds what [`Self::on_request_headers`] left for the response.
    pub fn on_response_headers(&self, stream: &mut impl Stream, pending: &StreamState) {
        for (name, value) in &pending.response_headers {
            stream.set_response_header(name, value);
        }
    }

    /// Check's evaluation order: credential, key format (a foreign bearer is
    /// not ours), table lookup, the key's environment against the one
    /// written in it, `decide`, then the rate limit.
    fn evaluate(
        &self,
        stream: &impl Stream,
        route: &RouteRequirements<'_>,
        now: DateTime<Utc>,
    ) -> Evaluation {
        let denied = |reason, credential| Evaluation {
            decision: Err(reason),
            key: None,
            credential,
            undecidable: None,
        };
        let text = |name: &str| {
            stream
                .request_header(name)
                .map(|value| std::str::from_utf8(value).map_err(|_| NotUtf8))
        };
        let input = CheckInput {
            authorization: text(&self.authorization_header),
            api_key: text(&self.api_key_header),
            ..CheckInput::default()
        };
        let Some((raw, source)) = credential(&input) else {
            return denied(DenyReason::MissingCredentials, None);
        };
        let Ok(raw) = raw else {
            return denied(DenyReason::MalformedKey, Some(source));
        };
        let parsed = match self.format.parse(raw) {
            Ok(parsed) => parsed,
            // keygate's own keys never get here, as in Check.
            Err(_) if is_imported_key(raw, &self.imported_prefixes) => {
                return Evaluation {
                    decision: Err(DenyReason::InvalidKey),
                    key: None,
                    credential: Some(source),
                    undecidable: Some(Undecidable::Imported),
                };
            }
            Err(KeyParseError::NotOurPrefix) => {
                let allow = source == CredentialSource::Authorization
                    && self.foreign_bearer == ForeignBearer::Allow;
                let decision = if allow {
                    Ok(None)
                } else {
                    Err(DenyReason::MissingCredentials)
                };
                return Evaluation {
                    decision,
                    key: None,
                    credential: None,
                    undecidable: None,
                };
            }
            Err(_) => return denied(DenyReason::MalformedKey, Some(source)),
        };
        let key = match self.table.lookup(&parsed.hash()) {
            Lookup::Found(key) => key,
            Lookup::Unknown => return denied(DenyReason::InvalidKey, Some(source)),
            Lookup::NotReady => {
                return Evaluation {
                    decision: Err(DenyReason::InvalidKey),
                    key: None,
                    credential: Some(source),
                    undecidable: Some(Undecidable::NoTable),
                }
            }
        };
        // The hash covers only the token, so the environment written in the
        // key must be checked against the key's own.
        if key.environment != parsed.environment {
            return denied(DenyReason::InvalidKey, Some(source));
        }
        // Envoy is asked for the address only when a list needs it.
        let client = if key.allow_list.is_open() {
            None
        } else {
            stream.client_address()
        };
        let decision = decide(&key, route, client, now).and_then(|()| self.rate_limit(&key));
        Evaluation {
            undecidable: (decision.is_ok() && key.has_credits).then_some(Undecidable::Credits),
            decision,
            key: Some(key),
            credential: Some(source),
        }
    }

    fn rate_limit(&self, key: &CheckKey) -> Result<Option<RateHeaders>, DenyReason> {
        let Some(limit) = key.rate_limit.or(self.default_rate_limit) else {
            return Ok(None);
        };
        rate_decision(self.limiters.check_local(key.id, limit))
    }

    /// The upstream request Check's OK response describes: identity headers
    /// set or removed (a client never forges one), the shadow decision, and
    /// the credential headers removed.
    fn allow(
        &self,
        stream: &mut impl Stream,
        key: Option<&CheckKey>,
        credential: Option<CredentialSource>,
        shadow_decision: Option<&str>,
    ) {
        // Read first, while the request is as the client sent it (Envoy's
        // stream lists its headers once, and again after any change): which
        // identity headers the client sent. Those are replaced, the others
        // added, which costs Envoy less.
        let sent =
            IDENTITY_HEADERS.map(|name| key.is_some() && stream.request_header(name).is_some());
        // Then removals, which Envoy's stream skips for a header it listed
        // as absent.
        if shadow_decision.is_none() {
            stream.remove_request_header(HEADER_SHADOW_DECISION);
        }
        match key {
            Some(key) => {
                for (name, value) in self.metadata.values(key) {
                    if value.is_none() {
                        stream.remove_request_header(name);
                    }
                }
            }
            None => self.remove_identity(stream),
        }
        self.strip_credential(stream, credential);
        if let Some(key) = key {
            let mut id_text = uuid::Uuid::encode_buffer();
            let identity = identity_values(key, &mut id_text);
            for ((name, value), sent) in IDENTITY_HEADERS.iter().zip(&identity).zip(sent) {
                if sent {
                    stream.set_request_header(name, value);
                } else {
                    stream.add_request_header(name, value);
                }
            }
            if self.dynamic_metadata {
                for (field, value) in IDENTITY_FIELDS.iter().zip(&identity) {
                    stream.set_metadata(METADATA_NAMESPACE, field, value);
                }
                for (name, value) in &key.metadata {
                    stream.set_metadata(KEY_METADATA_NAMESPACE, name, value);
                }
            }
            for (name, value) in self.metadata.values(key) {
                if let Some(value) = value {
                    stream.set_request_header(name, value);
                }
            }
        }
        if let Some(code) = shadow_decision {
            stream.set_request_header(HEADER_SHADOW_DECISION, code);
        }
    }

    /// Removes the identity headers a client may have sent: only keygate
    /// sets them.
    fn remove_identity(&self, stream: &mut impl Stream) {
        for name in IDENTITY_HEADERS
            .iter()
            .copied()
            .chain(self.metadata.header_names())
        {
            stream.remove_request_header(name);
        }
    }

    fn strip_credential(&self, stream: &mut impl Stream, credential: Option<CredentialSource>) {
        if self.strip_credential {
            // The API-key header first: it is mostly absent, and removing
            // the authorization header changes the request.
            stream.remove_request_header(&self.api_key_header);
            // A foreign bearer let through is the upstream's own credential;
            // only the API-key header is surely ours.
            if credential.is_some() {
                stream.remove_request_header(&self.authorization_header);
            }
        }
    }

    /// Asks keygate's forward-auth listener (`crate::lookup`) with what it
    /// reads: the request's method and path, the client address, the
    /// route's requirements and the credential headers as they came.
    /// Without a client address keygate would check IP allow-lists against
    /// Envoy's own, so the filter does not ask.
    fn ask_keygate(
        &self,
        stream: &mut impl Stream,
        lookup: &LookupSettings,
        route: &RouteRequirements<'_>,
        credential: Option<CredentialSource>,
        pending: &mut StreamState,
    ) -> HeadersAction {
        // Counted before it can fail, so that `lookup_failures` is always
        // a part of `lookups`.
        self.count(stream, |c| c.lookups);
        let Some(client) = stream.client_address() else {
            self.keygate_did_not_answer(stream, "keygate_lookup_without_client_address");
            return HeadersAction::Stop;
        };
        // Copied: the stream is borrowed mutably to start the call.
        let copy = |name: &str| stream.request_header(name).map(<[u8]>::to_vec);
        let method = copy(":method").unwrap_or_default();
        let path = copy(":path").unwrap_or_default();
        let credentials: Vec<(&str, Vec<u8>)> = [&self.authorization_header, &self.api_key_header]
            .into_iter()
            .filter_map(|name| Some((name.as_str(), copy(name)?)))
            .collect();
        let question = Question {
            method: &method,
            path: &path,
            client,
            route,
        };
        let mut headers = lookup::request_headers(lookup, &question);
        headers.extend(
            credentials
                .iter()
                .map(|(name, value)| (*name, std::borrow::Cow::Borrowed(value.as_slice()))),
        );
        let headers: Vec<(&str, &[u8])> = headers
            .iter()
            .map(|(name, value)| (*name, value.as_ref()))
            .collect();
        // `asked` is set only once the call has started: should Envoy answer
        // inside `call_out` (abi.rs), that answer finds no question and is
        // ignored, and the call reports that it did not start.
        match stream.call_out(&lookup.cluster, &headers, lookup.timeout_ms) {
            Ok(()) => {
                pending.asked = Some(Asked { credential });
                HeadersAction::Wait
            }
            Err(why) => {
                self.keygate_did_not_answer(stream, why);
                HeadersAction::Stop
            }
        }
    }

    /// Applies keygate's answer to the question [`Self::ask_keygate`] put
    /// (`None`: the call failed: a reset, or an answer over Envoy's buffer
    /// limit). It holds nothing of the stream's state, which the caller
    /// updates afterwards: a local reply may end the stream.
    pub fn on_lookup_answer(
        &self,
        stream: &mut impl Stream,
        asked: Asked,
        answer: Option<&Answer>,
    ) -> AnswerApplied {
        match answer.map_or(Verdict::NoAnswer, Answer::verdict) {
            Verdict::Allow {
                upstream,
                remove,
                respond_with,
            } => {
                self.remove_identity(stream);
                stream.remove_request_header(HEADER_SHADOW_DECISION);
                // keygate's own metadata headers may name more than ours.
                for name in remove {
                    stream.remove_request_header(name);
                }
                for (name, value) in &upstream {
                    stream.set_request_header(name, value);
                }
                if self.dynamic_metadata {
                    describe_in_metadata(stream, &upstream);
                }
                self.strip_credential(stream, asked.credential);
                AnswerApplied::Continue(respond_with)
            }
            Verdict::Deny {
                status,
                headers,
                body,
                details,
            } => {
                stream.send_local_reply(status, &headers, body, &details);
                AnswerApplied::Stop
            }
            Verdict::NoAnswer => {
                self.keygate_did_not_answer(stream, "keygate_lookup_failed");
                AnswerApplied::Stop
            }
        }
    }

    /// 503 `unavailable`, as Check answers when it cannot decide.
    fn keygate_did_not_answer(&self, stream: &mut impl Stream, details: &str) {
        self.count(stream, |c| c.lookup_failures);
        stream.send_local_reply(
            503,
            &[("content-type", "application/json")],
            r#"{"error":{"code":"unavailable","message":"keygate could not be asked about this API key; retry shortly."}}"#,
            details,
        );
    }

    fn deny(&self, stream: &mut impl Stream, reason: DenyReason) {
        let rate_limited;
        let denial = match reason {
            DenyReason::RateLimited { .. } => {
                rate_limited = Denial::of(reason);
                &rate_limited
            }
            _ => &self.denials[reason.index()],
        };
        let headers: Vec<(&str, &str)> = denial
            .headers
            .iter()
            .map(|(name, value)| (*name, value.as_str()))
            .collect();
        stream.send_local_reply(denial.status, &headers, &denial.body, &denial.details);
    }
}

/// The stream's dynamic metadata for an allowance of keygate's, from the
/// headers it answered with: the identity fields, and the metadata keygate
/// exports as headers (its `KEYGATE_METADATA_HEADERS`; the table's
/// allowances describe all of a key's metadata).
fn describe_in_metadata(stream: &mut impl Stream, upstream: &[(&str, &str)]) {
    for (name, value) in upstream {
        if let Some(field) = IDENTITY_HEADERS
            .iter()
            .position(|header| header == name)
            .map(|i| IDENTITY_FIELDS[i])
        {
            stream.set_metadata(METADATA_NAMESPACE, field, value);
        } else if let Some(key) = name.strip_prefix(META_HEADER_PREFIX) {
            stream.set_metadata(KEY_METADATA_NAMESPACE, key, value);
        }
    }
}
