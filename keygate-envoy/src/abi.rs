//! Hand-written bindings to the dynamic-module C ABI of Envoy 1.40
//! (`source/extensions/dynamic_modules/abi/abi.h`), and the event hooks this
//! module exports. This is the only module of the crate allowed `unsafe`:
//! everything else sees [`EnvoyStream`] through the safe [`Stream`] trait.
//!
//! Only what the filter uses is declared. Envoy resolves every HTTP filter
//! hook by name when it loads the filter config and refuses the config if one
//! is missing, so the hooks the filter does not need are exported as no-ops.
//!
//! Envoy owns the pointers it passes; a buffer it hands out is valid until the
//! hook returns or the same header map is modified, whichever comes first.

use std::{
    cell::{OnceCell, RefCell},
    ffi::{c_char, c_int, c_void, CStr},
    net::IpAddr,
};

use crate::{
    feed::Level,
    filter::{
        AnswerApplied, CounterId, DecisionCounters, FilterConfig, HeadersAction, Stream,
        StreamState,
    },
    lookup::Answer,
    settings::RouteSettings,
};

/// The ABI version the bindings were written against. Envoy 1.40 speaks
/// v0.2.0 and loads v0.1 modules (the header promises compatibility with the
/// next minor version), logging a warning that names this string.
const ABI_VERSION: &CStr = c"v0.1.0";

/// `envoy_dynamic_module_type_envoy_buffer`: bytes owned by Envoy.
#[repr(C)]
#[derive(Clone, Copy)]
struct EnvoyBuffer {
    ptr: *const u8,
    length: usize,
}

impl EnvoyBuffer {
    const EMPTY: Self = Self {
        ptr: std::ptr::null(),
        length: 0,
    };

    /// # Safety
    /// `ptr` must be null or point to `length` readable bytes that outlive `'a`.
    unsafe fn as_bytes<'a>(self) -> &'a [u8] {
        if self.ptr.is_null() || self.length == 0 {
            &[]
        } else {
            // SAFETY: the caller guarantees `ptr..ptr+length` is readable for 'a.
            unsafe { std::slice::from_raw_parts(self.ptr, self.length) }
        }
    }
}

/// `envoy_dynamic_module_type_module_buffer`: bytes owned by this module,
/// read by Envoy during the call they are passed to.
#[repr(C)]
#[derive(Clone, Copy)]
struct ModuleBuffer {
    ptr: *const u8,
    length: usize,
}

impl ModuleBuffer {
    fn of(bytes: &[u8]) -> Self {
        Self {
            ptr: bytes.as_ptr(),
            length: bytes.len(),
        }
    }
}

/// `envoy_dynamic_module_type_module_http_header`.
#[repr(C)]
struct ModuleHttpHeader {
    key_ptr: *const u8,
    key_length: usize,
    value_ptr: *const u8,
    value_length: usize,
}

/// `envoy_dynamic_module_type_envoy_http_header`: a header owned by Envoy
/// (`key_ptr`, `key_length`, `value_ptr`, `value_length`: the layout of two
/// [`EnvoyBuffer`]s).
#[repr(C)]
struct EnvoyHttpHeader {
    key: EnvoyBuffer,
    value: EnvoyBuffer,
}

impl EnvoyHttpHeader {
    /// # Safety
    /// The header must still be valid: listed during the running hook,
    /// with no change to its header map since.
    unsafe fn key(&self) -> &[u8] {
        // SAFETY: per the contract above.
        unsafe { self.key.as_bytes() }
    }

    /// # Safety
    /// As for [`Self::key`].
    unsafe fn value(&self) -> &[u8] {
        // SAFETY: per the contract above.
        unsafe { self.value.as_bytes() }
    }
}

/// `envoy_dynamic_module_type_http_header_type_RequestHeader`.
const REQUEST_HEADER: c_int = 0;
/// `envoy_dynamic_module_type_attribute_id_SourceAddress` (`source.address`).
const ATTRIBUTE_SOURCE_ADDRESS: c_int = 24;
/// `envoy_dynamic_module_type_http_header_type_ResponseHeader`.
const RESPONSE_HEADER: c_int = 2;

/// `..._on_http_filter_request_headers_status_Continue` / `_StopIteration`
/// / `_StopAllIterationAndBuffer`. A request waiting for keygate's answer
/// is held whole: with `StopIteration` alone, a body hook answering
/// `Continue` would send the request upstream before the answer.
const HEADERS_CONTINUE: c_int = 0;
const HEADERS_STOP_ITERATION: c_int = 1;
const HEADERS_STOP_ALL_AND_BUFFER: c_int = 3;

/// `envoy_dynamic_module_type_http_callout_init_result_*`.
const CALLOUT_STARTED: c_int = 0;
const CALLOUT_MISSING_HEADERS: c_int = 1;
const CALLOUT_CLUSTER_NOT_FOUND: c_int = 2;
/// `envoy_dynamic_module_type_http_callout_result_Success`: an answer came,
/// whatever its status (Envoy's own 503 or 504 included).
const CALLOUT_ANSWERED: c_int = 0;
/// `Continue` of the body and trailers statuses, request and response.
const CONTINUE: c_int = 0;

/// `envoy_dynamic_module_type_log_level_Info`, `_Warn` and `_Error`.
const LOG_INFO: c_int = 2;
const LOG_WARN: c_int = 3;
const LOG_ERROR: c_int = 4;

/// `envoy_dynamic_module_type_metrics_result_Success`.
const METRICS_SUCCESS: c_int = 0;

unsafe extern "C" {
    fn envoy_dynamic_module_callback_log(level: c_int, message: ModuleBuffer);

    fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        filter_config_envoy_ptr: *mut c_void,
        name: ModuleBuffer,
        label_names: *mut ModuleBuffer,
        label_names_length: usize,
        counter_id_ptr: *mut usize,
    ) -> c_int;

    fn envoy_dynamic_module_callback_http_filter_increment_counter(
        filter_envoy_ptr: *mut c_void,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> c_int;

    fn envoy_dynamic_module_callback_http_get_header(
        filter_envoy_ptr: *mut c_void,
        header_type: c_int,
        key: ModuleBuffer,
        result_buffer: *mut EnvoyBuffer,
        index: usize,
        optional_size: *mut usize,
    ) -> bool;

    fn envoy_dynamic_module_callback_http_get_headers_size(
        filter_envoy_ptr: *mut c_void,
        header_type: c_int,
    ) -> usize;

    /// Writes every header of `header_type` into `result_headers`, which
    /// has room for `_get_headers_size` of them.
    fn envoy_dynamic_module_callback_http_get_headers(
        filter_envoy_ptr: *mut c_void,
        header_type: c_int,
        result_headers: *mut EnvoyHttpHeader,
    ) -> bool;

    /// The string attribute `attribute_id`, written into `result`.
    fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
        filter_envoy_ptr: *mut c_void,
        attribute_id: c_int,
        result: *mut EnvoyBuffer,
    ) -> bool;

    /// Some ABI versions return whether it was set; nothing here reads it.
    fn envoy_dynamic_module_callback_http_set_dynamic_metadata_string(
        filter_envoy_ptr: *mut c_void,
        namespace: ModuleBuffer,
        key: ModuleBuffer,
        value: ModuleBuffer,
    );

    fn envoy_dynamic_module_callback_http_set_header(
        filter_envoy_ptr: *mut c_void,
        header_type: c_int,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;

    fn envoy_dynamic_module_callback_http_add_header(
        filter_envoy_ptr: *mut c_void,
        header_type: c_int,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;

    /// The per-route config this module made for the stream's route
    /// (`envoy_dynamic_module_on_http_filter_per_route_config_new`), or null.
    fn envoy_dynamic_module_callback_get_most_specific_route_config(
        filter_envoy_ptr: *mut c_void,
    ) -> *const c_void;

    fn envoy_dynamic_module_callback_http_filter_http_callout(
        filter_envoy_ptr: *mut c_void,
        callout_id_out: *mut u64,
        cluster_name: ModuleBuffer,
        headers: *mut ModuleHttpHeader,
        headers_size: usize,
        body: ModuleBuffer,
        timeout_milliseconds: u64,
    ) -> c_int;

    fn envoy_dynamic_module_callback_http_filter_continue_decoding(filter_envoy_ptr: *mut c_void);

    fn envoy_dynamic_module_callback_http_send_response(
        filter_envoy_ptr: *mut c_void,
        status_code: u32,
        headers_vector: *mut ModuleHttpHeader,
        headers_vector_size: usize,
        body: ModuleBuffer,
        details: ModuleBuffer,
    );
}

/// One HTTP stream as Envoy shows it to the filter during a hook.
pub(crate) struct EnvoyStream {
    /// `envoy_dynamic_module_type_http_filter_envoy_ptr`, valid for the hook.
    ptr: *mut c_void,
    /// Every request header, listed by Envoy in one call at the hook's first
    /// lookup: a lookup by name costs Envoy a lower-cased copy of the name
    /// each time, and a removal costs a call even for a header that is not
    /// there. Forgotten at every change to the headers, after which Envoy
    /// may have moved what the list points to. `None`: Envoy could not list
    /// them; lookups then go by name and no removal is skipped.
    request_headers: OnceCell<Option<Vec<EnvoyHttpHeader>>>,
}

impl EnvoyStream {
    fn new(ptr: *mut c_void) -> Self {
        Self {
            ptr,
            request_headers: OnceCell::new(),
        }
    }

    fn list_request_headers(&self) -> Option<Vec<EnvoyHttpHeader>> {
        // SAFETY: `self.ptr` is the filter pointer Envoy passed to the running hook.
        let count = unsafe {
            envoy_dynamic_module_callback_http_get_headers_size(self.ptr, REQUEST_HEADER)
        };
        let mut headers = Vec::with_capacity(count);
        // SAFETY: as above; `headers` has room for `count` entries, which
        // Envoy fills when it answers true.
        let listed = unsafe {
            envoy_dynamic_module_callback_http_get_headers(
                self.ptr,
                REQUEST_HEADER,
                headers.as_mut_ptr(),
            )
        };
        if !listed {
            return None;
        }
        // SAFETY: Envoy wrote `count` entries.
        unsafe { headers.set_len(count) };
        Some(headers)
    }

    /// The request header `name` (lower case, as Envoy keeps names), from
    /// the listing; its first value if repeated.
    fn listed_request_header(&self, name: &str) -> Option<&[u8]> {
        let listed = self
            .request_headers
            .get_or_init(|| self.list_request_headers());
        let Some(headers) = listed else {
            return self.header_by_name(name);
        };
        // SAFETY: the listed names and values stay valid until the hook
        // returns or the headers change; the `&self` borrow ends before
        // either, because every change takes `&mut self` and forgets the
        // list.
        unsafe { find_listed(headers, name) }.map(|header| unsafe { header.value() })
    }

    /// One request header looked up by name, for when Envoy could not list
    /// them.
    fn header_by_name(&self, name: &str) -> Option<&[u8]> {
        let mut value = EnvoyBuffer::EMPTY;
        // SAFETY: `self.ptr` is the filter pointer Envoy passed to the running
        // hook; `name` is readable for the call; `value` is a valid out slot
        // and the size out-pointer may be null.
        let found = unsafe {
            envoy_dynamic_module_callback_http_get_header(
                self.ptr,
                REQUEST_HEADER,
                ModuleBuffer::of(name.as_bytes()),
                &mut value,
                0,
                std::ptr::null_mut(),
            )
        };
        // SAFETY: as for the listing: valid until a change, which takes
        // `&mut self`.
        (found && !value.ptr.is_null()).then(|| unsafe { value.as_bytes() })
    }

    fn set(&mut self, header_type: c_int, name: &str, value: Option<&[u8]>) {
        self.request_headers.take();
        let value = match value {
            Some(v) => ModuleBuffer::of(v),
            // A null value removes the header.
            None => ModuleBuffer {
                ptr: std::ptr::null(),
                length: 0,
            },
        };
        // SAFETY: as in `header_by_name`; Envoy copies name and value before
        // returning.
        unsafe {
            envoy_dynamic_module_callback_http_set_header(
                self.ptr,
                header_type,
                ModuleBuffer::of(name.as_bytes()),
                value,
            );
        }
    }
}

impl Stream for EnvoyStream {
    fn request_header(&self, name: &str) -> Option<&[u8]> {
        self.listed_request_header(name)
    }

    fn client_address(&self) -> Option<IpAddr> {
        let mut value = EnvoyBuffer::EMPTY;
        // SAFETY: `self.ptr` is the filter pointer Envoy passed to the running
        // hook; `value` is a valid out slot.
        let found = unsafe {
            envoy_dynamic_module_callback_http_filter_get_attribute_string(
                self.ptr,
                ATTRIBUTE_SOURCE_ADDRESS,
                &mut value,
            )
        };
        if !found || value.ptr.is_null() {
            return None;
        }
        // SAFETY: Envoy's address string lives as long as the stream's
        // connection, which outlives this hook; it is parsed before returning.
        let text = std::str::from_utf8(unsafe { value.as_bytes() }).ok()?;
        crate::client_address::client_ip(text)
    }

    fn set_request_header(&mut self, name: &str, value: &str) {
        self.set(REQUEST_HEADER, name, Some(value.as_bytes()));
    }

    fn add_request_header(&mut self, name: &str, value: &str) {
        // Envoy appends (`addCopy`; the header's comment says it replaces):
        // the filter adds only what the listing showed absent.
        self.request_headers.take();
        // SAFETY: `self.ptr` is valid for the running hook; Envoy copies the
        // name and value before returning.
        unsafe {
            envoy_dynamic_module_callback_http_add_header(
                self.ptr,
                REQUEST_HEADER,
                ModuleBuffer::of(name.as_bytes()),
                ModuleBuffer::of(value.as_bytes()),
            );
        }
    }

    fn remove_request_header(&mut self, name: &str) {
        // While a listing is current, an absent header needs no call.
        let absent = self.request_headers.get().is_some_and(|listed| {
            let Some(headers) = listed else {
                return false;
            };
            // SAFETY: a listing still held is current (see `request_headers`).
            unsafe { find_listed(headers, name) }.is_none()
        });
        if !absent {
            self.set(REQUEST_HEADER, name, None);
        }
    }

    fn set_response_header(&mut self, name: &str, value: &str) {
        self.set(RESPONSE_HEADER, name, Some(value.as_bytes()));
    }

    fn set_metadata(&mut self, namespace: &str, key: &str, value: &str) {
        // SAFETY: `self.ptr` is valid for the running hook; Envoy copies the
        // three buffers into the stream's metadata before returning.
        unsafe {
            envoy_dynamic_module_callback_http_set_dynamic_metadata_string(
                self.ptr,
                ModuleBuffer::of(namespace.as_bytes()),
                ModuleBuffer::of(key.as_bytes()),
                ModuleBuffer::of(value.as_bytes()),
            );
        }
    }

    fn increment_counter(&mut self, id: CounterId) {
        // SAFETY: `self.ptr` is valid for the running hook; the counter was
        // defined without labels on this stream's filter config.
        unsafe {
            envoy_dynamic_module_callback_http_filter_increment_counter(
                self.ptr,
                id.0,
                std::ptr::null_mut(),
                0,
                1,
            );
        }
    }

    fn call_out(
        &mut self,
        cluster: &str,
        headers: &[(&str, &[u8])],
        timeout_ms: u64,
    ) -> Result<(), &'static str> {
        let mut headers = module_headers(headers.iter().map(|(name, value)| (*name, *value)));
        let mut callout_id = 0u64;
        // SAFETY: `self.ptr` is valid for the running hook; the cluster name
        // and header array outlive the call, and Envoy copies them. The
        // answer comes to `_http_callout_done` for this stream, or never if
        // the stream ends first.
        let started = unsafe {
            envoy_dynamic_module_callback_http_filter_http_callout(
                self.ptr,
                &mut callout_id,
                ModuleBuffer::of(cluster.as_bytes()),
                headers.as_mut_ptr(),
                headers.len(),
                ModuleBuffer::of(&[]),
                timeout_ms,
            )
        };
        match started {
            CALLOUT_STARTED => Ok(()),
            CALLOUT_CLUSTER_NOT_FOUND => Err("keygate_lookup_cluster_not_found"),
            CALLOUT_MISSING_HEADERS => Err("keygate_lookup_missing_headers"),
            _ => Err("keygate_lookup_not_started"),
        }
    }

    fn send_local_reply(
        &mut self,
        status: u16,
        headers: &[(&str, &str)],
        body: &str,
        details: &str,
    ) {
        let mut headers = module_headers(
            headers
                .iter()
                .map(|(name, value)| (*name, value.as_bytes())),
        );
        // SAFETY: `self.ptr` is valid for the running hook; the header array,
        // body and details outlive the call, and Envoy copies them.
        unsafe {
            envoy_dynamic_module_callback_http_send_response(
                self.ptr,
                u32::from(status),
                headers.as_mut_ptr(),
                headers.len(),
                ModuleBuffer::of(body.as_bytes()),
                ModuleBuffer::of(details.as_bytes()),
            );
        }
    }
}

/// The first listed header named `name`.
///
/// # Safety
/// The listing must be current: made in the running hook, with no change
/// to the headers since (the stream forgets it at every change).
unsafe fn find_listed<'h>(
    headers: &'h [EnvoyHttpHeader],
    name: &str,
) -> Option<&'h EnvoyHttpHeader> {
    // SAFETY: the listing is current, per the contract above.
    headers
        .iter()
        .find(|header| unsafe { header.key() } == name.as_bytes())
}

/// Headers as the ABI takes them, pointing into the borrowed names and
/// values, which must outlive the call they are passed to.
fn module_headers<'a>(headers: impl Iterator<Item = (&'a str, &'a [u8])>) -> Vec<ModuleHttpHeader> {
    headers
        .map(|(name, value)| ModuleHttpHeader {
            key_ptr: name.as_ptr(),
            key_length: name.len(),
            value_ptr: value.as_ptr(),
            value_length: value.len(),
        })
        .collect()
}

/// keygate's answer to a lookup, copied out of what Envoy passed to the
/// callout hook.
///
/// # Safety
/// `headers` and `body_chunks` must be null or point to `headers_size` and
/// `body_chunks_size` entries that Envoy keeps alive for the running hook.
unsafe fn copy_answer(
    headers: *const EnvoyHttpHeader,
    headers_size: usize,
    body_chunks: *const EnvoyBuffer,
    body_chunks_size: usize,
) -> Answer {
    // SAFETY: per the contract above.
    let (headers, chunks) = unsafe {
        (
            slice_or_empty(headers, headers_size),
            slice_or_empty(body_chunks, body_chunks_size),
        )
    };
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let headers: Vec<(String, String)> = headers
        .iter()
        // SAFETY: each header's bytes live as long as the header array.
        .map(|h| unsafe { (text(h.key()), text(h.value())) })
        .collect();
    let status = headers
        .iter()
        .find(|(name, _)| name == ":status")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0);
    // SAFETY: each chunk's bytes live as long as the chunk array.
    let body = chunks
        .iter()
        .flat_map(|chunk| unsafe { chunk.as_bytes() })
        .copied()
        .collect();
    Answer {
        status,
        headers,
        body,
    }
}

/// # Safety
/// `ptr` must be null or point to `length` initialised values alive for `'a`.
unsafe fn slice_or_empty<'a, T>(ptr: *const T, length: usize) -> &'a [T] {
    if ptr.is_null() || length == 0 {
        &[]
    } else {
        // SAFETY: per the contract above.
        unsafe { std::slice::from_raw_parts(ptr, length) }
    }
}

/// Logs through Envoy's logger, under its `dynamic_modules` component.
fn log_error(message: &str) {
    log_at(LOG_ERROR, message);
}

/// The key feed's log (`crate::feed::Log`). Envoy's logger may be called
/// from any thread, the feed's own included.
fn log_feed(level: Level, message: &str) {
    log_at(
        match level {
            Level::Info => LOG_INFO,
            Level::Warn => LOG_WARN,
        },
        message,
    );
}

fn log_at(level: c_int, message: &str) {
    // SAFETY: `message` is readable for the call and Envoy copies it.
    unsafe { envoy_dynamic_module_callback_log(level, ModuleBuffer::of(message.as_bytes())) }
}

/// The module's state for one HTTP stream (`..._http_filter_module_ptr`).
struct StreamFilter {
    /// The config that created the stream's filter. Envoy keeps a config
    /// alive while any of its filters is, and destroys it only after.
    config: *const FilterConfig,
    /// Borrowed by one hook at a time. Hooks can nest: Envoy may run the
    /// callout hook inside `call_out` (an answer it makes up at once) while
    /// the request-headers hook holds the state. That answer finds it
    /// borrowed and is dropped; the call then reports it did not start, and
    /// the request gets a 503.
    state: RefCell<StreamState>,
}

/// Turns a stream filter pointer back into its config and state.
///
/// # Safety
/// `ptr` must come from [`envoy_dynamic_module_on_http_filter_new`] and not
/// yet have been passed to the destroy hook. Envoy calls a stream's hooks on
/// one worker thread; shared references only, because hooks can nest.
unsafe fn stream_filter<'a>(ptr: *const c_void) -> (&'a FilterConfig, &'a RefCell<StreamState>) {
    // SAFETY: per the contract above, `ptr` is a live `Box<StreamFilter>`.
    let filter = unsafe { &*ptr.cast::<StreamFilter>() };
    // SAFETY: the config outlives its filters (see `StreamFilter::config`).
    let config = unsafe { &*filter.config };
    (config, &filter.state)
}

/// The stream's route requirements, if its route has a per-route config.
fn route_settings<'a>(filter_envoy_ptr: *mut c_void) -> Option<&'a RouteSettings> {
    // SAFETY: `filter_envoy_ptr` is the pointer of the running hook.
    let ptr =
        unsafe { envoy_dynamic_module_callback_get_most_specific_route_config(filter_envoy_ptr) };
    // SAFETY: a non-null pointer is one this module returned from
    // `_per_route_config_new`, kept alive by the route the stream holds.
    (!ptr.is_null()).then(|| unsafe { &*ptr.cast::<RouteSettings>() })
}

// ------------------------------- event hooks -------------------------------

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    ABI_VERSION.as_ptr()
}

/// Defines a counter without labels on a filter config being created.
fn define_counter(filter_config_envoy_ptr: *mut c_void, name: &str) -> Option<CounterId> {
    let mut id = 0usize;
    // SAFETY: Envoy passed `filter_config_envoy_ptr` to the running
    // `_config_new` hook, where stats may still be defined; `name` is
    // readable for the call and `id` is a valid out slot.
    let result = unsafe {
        envoy_dynamic_module_callback_http_filter_config_define_counter(
            filter_config_envoy_ptr,
            ModuleBuffer::of(name.as_bytes()),
            std::ptr::null_mut(),
            0,
            &mut id,
        )
    };
    (result == METRICS_SUCCESS).then_some(CounterId(id))
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    filter_config_envoy_ptr: *mut c_void,
    name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> *const c_void {
    // SAFETY: Envoy passes the filter name and config bytes, valid for this call.
    let (name, config) = unsafe { (name.as_bytes(), config.as_bytes()) };
    let config = FilterConfig::new(name, config, log_feed).and_then(|config| {
        DecisionCounters::define(|name| define_counter(filter_config_envoy_ptr, name))
            .map(|counters| config.with_counters(counters))
            .ok_or(crate::filter::ConfigError::Setting(
                "Envoy refused to define the decision counters".to_owned(),
            ))
    });
    match config {
        Ok(config) => Box::into_raw(Box::new(config)).cast_const().cast(),
        // Null makes Envoy reject the configuration. Envoy's own message
        // says only that initialisation failed, so log why first.
        Err(e) => {
            log_error(&format!("keygate-envoy: filter config rejected: {e}"));
            std::ptr::null()
        }
    }
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config_ptr: *const c_void) {
    // SAFETY: Envoy destroys each config it created once, after its last filter.
    drop(unsafe { Box::from_raw(config_ptr.cast_mut().cast::<FilterConfig>()) });
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_new(
    _name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> *const c_void {
    // SAFETY: Envoy passes the config bytes, valid for this call.
    let config = unsafe { config.as_bytes() };
    match serde_json::from_slice::<RouteSettings>(config) {
        Ok(settings) => Box::into_raw(Box::new(settings)).cast_const().cast(),
        Err(e) => {
            log_error(&format!("keygate-envoy: per-route config rejected: {e}"));
            std::ptr::null()
        }
    }
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_destroy(
    config_ptr: *const c_void,
) {
    // SAFETY: Envoy destroys each per-route config it created once.
    drop(unsafe { Box::from_raw(config_ptr.cast_mut().cast::<RouteSettings>()) });
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config_ptr: *const c_void,
    _filter_envoy_ptr: *mut c_void,
) -> *const c_void {
    let filter = StreamFilter {
        config: config_ptr.cast(),
        state: RefCell::default(),
    };
    Box::into_raw(Box::new(filter)).cast_const().cast()
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter_envoy_ptr: *mut c_void,
    filter_module_ptr: *const c_void,
    _end_of_stream: bool,
) -> c_int {
    // SAFETY: Envoy passes the pointer `_filter_new` returned for this stream.
    let (config, state) = unsafe { stream_filter(filter_module_ptr) };
    let mut stream = EnvoyStream::new(filter_envoy_ptr);
    let Ok(mut pending) = state.try_borrow_mut() else {
        // The first hook of a stream: nothing can hold its state. Should
        // something, the request is refused, never let through undecided.
        stream.send_local_reply(500, &[], "", "keygate_stream_state_busy");
        return HEADERS_STOP_ITERATION;
    };
    let route = route_settings(filter_envoy_ptr);
    match config.on_request_headers(&mut stream, route, chrono::Utc::now(), &mut pending) {
        HeadersAction::Continue => HEADERS_CONTINUE,
        HeadersAction::Stop => HEADERS_STOP_ITERATION,
        HeadersAction::Wait => HEADERS_STOP_ALL_AND_BUFFER,
    }
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    _filter_envoy_ptr: *mut c_void,
    _filter_module_ptr: *const c_void,
    _end_of_stream: bool,
) -> c_int {
    CONTINUE
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    _filter_envoy_ptr: *mut c_void,
    _filter_module_ptr: *const c_void,
) -> c_int {
    CONTINUE
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    filter_envoy_ptr: *mut c_void,
    filter_module_ptr: *const c_void,
    _end_of_stream: bool,
) -> c_int {
    // SAFETY: Envoy passes the pointer `_filter_new` returned for this stream.
    let (config, state) = unsafe { stream_filter(filter_module_ptr) };
    let mut stream = EnvoyStream::new(filter_envoy_ptr);
    if let Ok(pending) = state.try_borrow() {
        config.on_response_headers(&mut stream, &pending);
    }
    CONTINUE
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    _filter_envoy_ptr: *mut c_void,
    _filter_module_ptr: *const c_void,
    _end_of_stream: bool,
) -> c_int {
    CONTINUE
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    _filter_envoy_ptr: *mut c_void,
    _filter_module_ptr: *const c_void,
) -> c_int {
    CONTINUE
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    _filter_envoy_ptr: *mut c_void,
    _filter_module_ptr: *const c_void,
) {
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_destroy(filter_module_ptr: *const c_void) {
    // SAFETY: Envoy destroys each stream filter `_filter_new` made once.
    drop(unsafe { Box::from_raw(filter_module_ptr.cast_mut().cast::<StreamFilter>()) });
}

/// keygate's answer to a lookup the filter started (`crate::lookup`). Not
/// called when the stream ended first: Envoy cancels the call.
#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    filter_envoy_ptr: *mut c_void,
    filter_module_ptr: *const c_void,
    _callout_id: u64,
    result: c_int,
    headers: *const EnvoyHttpHeader,
    headers_size: usize,
    body_chunks: *const EnvoyBuffer,
    body_chunks_size: usize,
) {
    // SAFETY: Envoy passes the pointer `_filter_new` returned for this stream.
    let (config, state) = unsafe { stream_filter(filter_module_ptr) };
    // The state is borrowed only briefly, never across a call into Envoy:
    // a local reply may end the stream.
    let Some(asked) = state.try_borrow_mut().ok().and_then(|mut s| s.take_asked()) else {
        return; // no question waits (see `StreamFilter::state`)
    };
    let answer = (result == CALLOUT_ANSWERED).then(|| {
        // SAFETY: Envoy keeps the answer's headers and body alive for this hook.
        unsafe { copy_answer(headers, headers_size, body_chunks, body_chunks_size) }
    });
    let mut stream = EnvoyStream::new(filter_envoy_ptr);
    match config.on_lookup_answer(&mut stream, asked, answer.as_ref()) {
        AnswerApplied::Continue(respond_with) => {
            if let Ok(mut pending) = state.try_borrow_mut() {
                pending.add_response_headers(respond_with);
            }
            // SAFETY: `filter_envoy_ptr` is valid for this hook; the request
            // was held by `_request_headers` returning
            // StopAllIterationAndBuffer, and no local reply was sent.
            unsafe {
                envoy_dynamic_module_callback_http_filter_continue_decoding(filter_envoy_ptr)
            };
        }
        AnswerApplied::Stop => {}
    }
}

// The filter starts no streams or scheduled events, so Envoy never calls
// these; they exist because Envoy requires the symbols.

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _filter_envoy_ptr: *mut c_void,
    _filter_module_ptr: *const c_void,
    _stream_id: u64,
    _headers: *const c_void,
    _headers_size: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _filter_envoy_ptr: *mut c_void,
    _filter_module_ptr: *const c_void,
    _stream_id: u64,
    _data: *const c_void,
    _data_count: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _filter_envoy_ptr: *mut c_void,
    _filter_module_ptr: *const c_void,
    _stream_id: u64,
    _trailers: *const c_void,
    _trailers_size: usize,
) {
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    _filter_envoy_ptr: *mut c_void,
    _filter_module_ptr: *const c_void,
    _stream_id: u64,
) {
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    _filter_envoy_ptr: *mut c_void,
    _filter_module_ptr: *const c_void,
    _stream_id: u64,
    _reason: c_int,
) {
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    _filter_envoy_ptr: *mut c_void,
    _filter_module_ptr: *const c_void,
    _event_id: u64,
) {
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _filter_envoy_ptr: *mut c_void,
    _filter_module_ptr: *const c_void,
) {
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _filter_envoy_ptr: *mut c_void,
    _filter_module_ptr: *const c_void,
) {
}
