//! The composition root: store, cache, usage, services and listeners, and the
//! ordered drain on stop.
//!
//! Stop order, each step bounded by what is left of the grace period:
//! health NOT_SERVING → listeners (gRPC and REST) stop accepting and finish
//! in-flight calls →
//! final usage flush → background tasks end → pool closed.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use tokio::{net::TcpListener, task::JoinHandle, time::Instant};
use tokio_util::sync::CancellationToken;
use tonic::{
    service::interceptor::InterceptedService,
    transport::{Certificate, Identity, Server, ServerTlsConfig},
};
use tonic_health::{server::HealthReporter, ServingStatus};

use crate::{
    admin::KeyAdmin,
    admin_runtime::AdminRuntime,
    authz::Authorizer,
    cache::KeyCache,
    clock::Clock,
    config::{Config, TlsConfig},
    credits::CreditLedger,
    feed_proto::key_feed_server::KeyFeedServer,
    forward_auth::{self, ForwardAuth},
    grpc::{
        accept::incoming,
        auth::AdminAuth,
        ext_authz::{AuthorizationServer, ExtAuthzService},
        key_admin::KeyAdminService,
        key_feed::{self, KeyFeedService},
        reflection::{self, Listener},
    },
    invalidation, low_priority,
    proto::key_admin_server::KeyAdminServer,
    ratelimit::{RateLimitStore, RateLimiters, SharedLimiter},
    replica_state::ReplicaKeyState,
    rest::{self, principal::Authenticator, RestState},
    store::{SqliteOwner, Store},
    usage, webhooks,
};

/// Rate-limiter states kept at most (idle ones expire on their own).
const LIMITER_CAPACITY: u64 = 1_000_000;
const PRUNE_EVERY: Duration = Duration::from_secs(24 * 60 * 60);
const FIRST_PRUNE_AFTER: Duration = Duration::from_secs(60);
const GAUGE_EVERY: Duration = Duration::from_secs(5);
/// How long start-up waits for the first LISTEN before serving anyway.
const LISTENER_START_WAIT: Duration = Duration::from_secs(5);
/// Largest KeyAdmin request decoded. The largest valid one (256 abilities,
/// 50 metadata entries of 500 characters, the longest names) is well under
/// it; anything bigger is refused before it is decoded, so no request can
/// hold a runtime thread that Check shares for long.
pub const MAX_ADMIN_REQUEST_BYTES: usize = 256 * 1024;

/// A started server.
pub struct Running {
    pub authz_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub forward_auth_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub store: Store,
    pub cache: Arc<KeyCache>,
    /// The key lifecycle use-cases, for tests that call them directly
    /// (`KeyAdmin::prune` after moving the clock given to
    /// [`start_with_clock`]).
    pub admin: Arc<KeyAdmin>,
    stop: CancellationToken,
    lifecycle: JoinHandle<Stopped>,
}

/// How a stop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    /// Usage events accepted from Checks and never written: the final flush
    /// did not finish within the shutdown grace.
    pub abandoned_usage: u64,
}

impl Running {
    /// Starts the drain and waits for it to end.
    pub async fn stop(self) -> Stopped {
        self.stop.cancel();
        match self.lifecycle.await {
            Ok(stopped) => stopped,
            Err(error) => {
                tracing::error!(%error, "the server task failed during shutdown");
                Stopped { abandoned_usage: 0 }
            }
        }
    }
}

/// Runs until `shutdown` resolves, then drains. A stop that abandoned usage
/// is an error, so the process exits non-zero and says how much was lost.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let running = start(config).await?;
    shutdown.await;
    let stopped = running.stop().await;
    if stopped.abandoned_usage > 0 {
        anyhow::bail!(
            "stopped with {} usage events never written: the final flush did not finish within \
             the shutdown grace (KEYGATE_SHUTDOWN_GRACE); the warnings above name the cause",
            stopped.abandoned_usage
        );
    }
    Ok(())
}

/// The local limiters, counting in Redis first when it is configured.
fn rate_limiters(store: &RateLimitStore) -> anyhow::Result<RateLimiters> {
    let local = RateLimiters::new(LIMITER_CAPACITY);
    Ok(match store {
        RateLimitStore::Local => local,
        RateLimitStore::Redis(settings) => {
            let shared =
                SharedLimiter::new(settings).context("invalid KEYGATE_RATE_LIMIT_STORE")?;
            tracing::info!(timeout = ?settings.timeout, prefix = %settings.prefix, "rate limits are shared across replicas through Redis");
            local.with_shared(shared)
        }
    })
}

/// Opens the store, migrates if configured, binds both listeners and starts
/// every task. Returns once the listeners accept connections.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    start_with_clock(config, Clock::system()).await
}

/// [`start`] with the use-cases, Check and the webhook dispatcher reading
/// the time from `clock`: what a test of expiry, overlaps or dormancy
/// moves instead of waiting.
pub async fn start_with_clock(config: Config, clock: Clock) -> anyhow::Result<Running> {
    // Held until the server has stopped: a second server of the same SQLite
    // file would serve keys this one revoked (store::sqlite_owner).
    let store_options = config.store_options();
    let sqlite_owner = SqliteOwner::claim(&store_options.url)?;
    let store = Store::connect(&store_options)
        .await
        .context("cannot open the database")?;
    if config.migrate_on_start {
        store
            .migrate()
            .await
            .context("cannot run database migrations")?;
    }

    let cache = Arc::new(KeyCache::new(store.clone(), config.cache_settings()));
    let limiters = Arc::new(rate_limiters(&config.rate_limit_store)?);
    let (usage_sender, flusher) = usage::buffer(
        config.usage_buffer_bounds(),
        store.clone(),
        config.usage_flush_settings(),
    );
    let credits = Arc::new(CreditLedger::new(
        store.clone(),
        config.credit_lease,
        config.check_timeout,
        clock.clone(),
    ));
    let replica = ReplicaKeyState::new(cache.clone(), limiters.clone(), credits.clone());
    let authorizer = Arc::new(
        Authorizer::new(
            config.authz_settings(),
            cache.clone(),
            limiters.clone(),
            config.usage_enabled.then(|| usage_sender.clone()),
        )
        .with_credits(credits.clone())
        .with_clock(clock.clone()),
    );
    let admin = Arc::new(
        KeyAdmin::new(
            store.clone(),
            config.key_format.clone(),
            config.ability_catalog.clone(),
            config.max_keys_per_owner,
            config.usage_log_retention_days,
            replica.clone(),
        )
        .with_policy(config.admin_policy())
        .with_webhook_targets(config.webhooks.policy)
        .with_hygiene(config.hygiene_policy())
        .with_clock(clock.clone()),
    );
    let dispatcher = Arc::new(
        webhooks::Dispatcher::new(store.clone(), config.webhooks.clone())
            .context("cannot build the webhook HTTP client")?
            .with_clock(clock),
    );
    if config.admin_tokens.is_empty() {
        tracing::warn!(
            addr = %config.admin_addr,
            "KeyAdmin has NO admin tokens: every local caller is an administrator. Development only; set KEYGATE_ADMIN_TOKENS (see `keygate admin-token`)."
        );
    }

    let authz_listener = TcpListener::bind(config.authz_addr)
        .await
        .with_context(|| {
            format!(
                "cannot bind the Check listener on {} (KEYGATE_AUTHZ_ADDR)",
                config.authz_addr
            )
        })?;
    let admin_listener = TcpListener::bind(config.admin_addr)
        .await
        .with_context(|| {
            format!(
                "cannot bind the KeyAdmin listener on {} (KEYGATE_ADMIN_ADDR)",
                config.admin_addr
            )
        })?;
    let forward_auth_listener = TcpListener::bind(config.forward_auth_addr)
        .await
        .with_context(|| {
            format!(
                "cannot bind the forward-auth listener on {} (KEYGATE_FORWARD_AUTH_ADDR)",
                config.forward_auth_addr
            )
        })?;
    let authz_addr = authz_listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;
    let forward_auth_addr = forward_auth_listener.local_addr()?;
    let http_listener = TcpListener::bind(config.http_addr).await.with_context(|| {
        format!(
            "cannot bind the REST listener on {} (KEYGATE_HTTP_ADDR)",
            config.http_addr
        )
    })?;
    let http_addr = http_listener.local_addr()?;

    let (health, health_service) = tonic_health::server::health_reporter();
    let (authz_reflection_v1, authz_reflection_v1alpha) = reflection::services(Listener::Check)?;
    let (admin_reflection_v1, admin_reflection_v1alpha) = reflection::services(Listener::Admin)?;

    let stop = CancellationToken::new();
    let stopped = |token: &CancellationToken| token.clone().cancelled_owned();
    // Listeners stop on their own signal, sent after health turns NOT_SERVING.
    let drain = CancellationToken::new();

    let (forward_input, forward_render) = config.forward_auth_settings();
    let forward_auth = Arc::new(ForwardAuth::new(
        authorizer.clone(),
        forward_input,
        forward_render,
    ));
    let admin_handle = admin.clone();
    let rest_router = rest::router(Arc::new(RestState {
        leaks: config.hygiene.scanning_keys.clone(),
        admin: admin.clone(),
        auth: Authenticator::new(
            AdminAuth::new(config.admin_tokens.clone()),
            config.key_format.clone(),
            authorizer.clone(),
        ),
    }));
    let ext_authz = ExtAuthzService::new(authorizer, config.credential_headers());
    let authz_server = server_builder(config.tls.as_ref(), false)?
        .add_service(health_service.clone())
        .add_service(authz_reflection_v1)
        .add_service(authz_reflection_v1alpha)
        .add_service(AuthorizationServer::new(ext_authz))
        .serve_with_incoming_shutdown(incoming(authz_listener), stopped(&drain));
    let admin_router = server_builder(config.tls.as_ref(), true)?
        .add_service(health_service)
        .add_service(admin_reflection_v1)
        .add_service(admin_reflection_v1alpha)
        .add_service(InterceptedService::new(
            KeyAdminServer::new(KeyAdminService::new(admin.clone()))
                .max_decoding_message_size(MAX_ADMIN_REQUEST_BYTES),
            AdminAuth::new(config.admin_tokens.clone()),
        ))
        .add_service(InterceptedService::new(
            KeyFeedServer::new(KeyFeedService::new(
                store.clone(),
                replica.events().clone(),
                config.usage_enabled.then(|| usage_sender.clone()),
                drain.clone(),
            ))
            .max_decoding_message_size(key_feed::MAX_USAGE_REPORT_BYTES),
            AdminAuth::new(config.admin_tokens.clone()),
        ));
    // KeyAdmin and REST serve on a runtime of their own: see admin_runtime.
    let admin_runtime = AdminRuntime::start()?;
    let admin_stopped = stopped(&drain);
    let admin_task = admin_runtime.serve(admin_listener, move |listener| {
        admin_router.serve_with_incoming_shutdown(incoming(listener), admin_stopped)
    })?;
    let rest_stopped = stopped(&drain);
    let rest_task = admin_runtime.serve(http_listener, move |listener| {
        rest::serve(listener, rest_router, rest_stopped)
    })?;
    let forward_auth_server =
        forward_auth::serve(forward_auth_listener, forward_auth, stopped(&drain));
    let mut background = Vec::new();
    if store.is_postgres() {
        let (connected, listening) = tokio::sync::oneshot::channel();
        background.push(tokio::spawn(invalidation::listen(
            store.clone(),
            replica,
            stopped(&stop),
            connected,
        )));
        // Serving before the subscription exists would let a revoke made in
        // between go unheard until the cache TTL. The bound keeps a slow
        // LISTEN from blocking start-up; every later connect clears the cache.
        if tokio::time::timeout(LISTENER_START_WAIT, listening)
            .await
            .is_err()
        {
            tracing::warn!(waited = ?LISTENER_START_WAIT, "serving before the invalidation listener connected");
        }
    } else {
        // One process owns a SQLite file: every key is issued through it.
        cache.issued().fill(
            store
                .issued_hash_prefixes()
                .await
                .context("cannot read the issued keys")?,
        );
    }
    let authz_task = tokio::spawn(authz_server);
    let forward_auth_task = tokio::spawn(async move {
        forward_auth_server.await;
        Ok::<(), tonic::transport::Error>(())
    });
    set_health(&health, ServingStatus::Serving).await;
    tracing::info!(
        %authz_addr,
        %admin_addr,
        %forward_auth_addr,
        %http_addr,
        metrics_addr = %config.metrics_addr,
        database = store_kind(&store),
        "keygate serving"
    );

    let finish_usage = CancellationToken::new();
    // Lets runtimes other than this one and the admin runtime go once no
    // pooled connection they drive can be used any more (low_priority).
    let pools_closed = CancellationToken::new();
    let flusher_task = tokio::spawn(flusher.run(stopped(&finish_usage)));
    if config.prune_enabled {
        background.push(tokio::spawn(prune_daily(admin, stopped(&stop))));
    }
    if config.webhooks_enabled {
        // Off the Check runtime, at a lower priority (src/low_priority.rs).
        let stop = stopped(&stop);
        background.push(low_priority::spawn(
            "keygate-hooks",
            move || dispatcher.run(stop),
            stopped(&pools_closed),
        )?);
    }
    let usage_tally = usage_sender.tally().clone();
    background.push(tokio::spawn(report_gauges(
        cache.clone(),
        usage_sender,
        stopped(&stop),
    )));

    let grace = config.shutdown_grace;
    let lifecycle_store = store.clone();
    let lifecycle_stop = stop.clone();
    let lifecycle = tokio::spawn(async move {
        lifecycle_stop.cancelled().await;
        let deadline = Instant::now() + grace;
        tracing::info!(?grace, "draining");
        set_health(&health, ServingStatus::NotServing).await;
        drain.cancel();
        for (name, task) in [
            ("Check listener", authz_task),
            ("KeyAdmin listener", admin_task),
            ("forward-auth listener", forward_auth_task),
        ] {
            bounded(name, deadline, task).await;
        }
        bounded("REST listener", deadline, rest_task).await;
        finish_usage.cancel();
        bounded("final usage flush", deadline, flusher_task).await;
        // No Check is in flight any more: what this replica leased and did
        // not spend goes back.
        let give_back = tokio::spawn(async move { credits.return_all().await });
        bounded("return unspent credits", deadline, give_back).await;
        for task in background {
            bounded("background task", deadline, task).await;
        }
        lifecycle_store.close().await;
        drop(sqlite_owner);
        pools_closed.cancel();
        // Last: connections the pool opened from admin requests are driven
        // by the admin runtime until the pool is closed.
        drop(admin_runtime);
        let abandoned_usage = usage_tally.unwritten();
        if abandoned_usage > 0 {
            tracing::error!(
                events = abandoned_usage,
                "stopped; usage events were abandoned"
            );
        } else {
            tracing::info!("stopped");
        }
        Stopped { abandoned_usage }
    });

    Ok(Running {
        authz_addr,
        admin_addr,
        forward_auth_addr,
        http_addr,
        store,
        cache,
        admin: admin_handle,
        stop,
        lifecycle,
    })
}

fn store_kind(store: &Store) -> &'static str {
    if store.is_postgres() {
        "postgres"
    } else {
        "sqlite"
    }
}

fn server_builder(tls: Option<&TlsConfig>, admin: bool) -> anyhow::Result<Server> {
    let mut builder = Server::builder();
    if let Some(tls) = tls {
        let cert = std::fs::read(&tls.cert)
            .with_context(|| format!("cannot read KEYGATE_TLS_CERT {}", tls.cert.display()))?;
        let key = std::fs::read(&tls.key)
            .with_context(|| format!("cannot read KEYGATE_TLS_KEY {}", tls.key.display()))?;
        let mut settings = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
        let (client_ca, env) = if admin {
            (&tls.admin_client_ca, "KEYGATE_ADMIN_CLIENT_CA")
        } else {
            (&tls.authz_client_ca, "KEYGATE_AUTHZ_CLIENT_CA")
        };
        if let Some(ca) = client_ca {
            let ca =
                std::fs::read(ca).with_context(|| format!("cannot read {env} {}", ca.display()))?;
            settings = settings.client_ca_root(Certificate::from_pem(ca));
        }
        builder = builder
            .tls_config(settings)
            .context("invalid TLS configuration")?;
    }
    Ok(builder)
}

async fn set_health(health: &HealthReporter, status: ServingStatus) {
    for service in [
        "",
        "envoy.service.auth.v3.Authorization",
        "keygate.admin.v1.KeyAdmin",
    ] {
        health.set_service_status(service, status).await;
    }
}

/// Awaits `task` until `deadline`; past it, logs and abandons the step so a
/// stuck connection cannot hang the stop (hyper issue 4170).
async fn bounded(step: &str, deadline: Instant, task: JoinHandle<impl Sized>) {
    let abort = task.abort_handle();
    match tokio::time::timeout_at(deadline, task).await {
        Ok(Ok(_)) => tracing::debug!(step, "drained"),
        Ok(Err(error)) => tracing::error!(step, %error, "task failed while draining"),
        Err(_) => {
            tracing::warn!(step, "shutdown grace expired; abandoning this step");
            abort.abort();
        }
    }
}

async fn prune_daily(admin: Arc<KeyAdmin>, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    let mut next = Instant::now() + FIRST_PRUNE_AFTER;
    loop {
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep_until(next) => {}
        }
        match admin.prune("keygate-prune").await {
            Ok(Some(_)) => {}
            Ok(None) => tracing::debug!("another replica is pruning"),
            Err(error) => {
                tracing::warn!(error = %crate::grpc::status::chain(&error), "prune failed; will retry tomorrow")
            }
        }
        next = Instant::now() + PRUNE_EVERY;
    }
}

async fn report_gauges(
    cache: Arc<KeyCache>,
    usage: usage::UsageSender,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    let entries = metrics::gauge!("keygate_cache_entries");
    let depth = metrics::gauge!("keygate_usage_buffer_depth");
    let mut ticker = tokio::time::interval(GAUGE_EVERY);
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = ticker.tick() => {
                entries.set(cache.entry_count() as f64);
                depth.set(usage.depth() as f64);
            }
        }
    }
}
