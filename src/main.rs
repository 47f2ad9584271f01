//! The `keygate` binary: parse the command line, load the configuration,
//! start telemetry, hand over to [`keygate::app`].

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
mod import_file;

use keygate::{
    admin::AdminRole,
    admin::{Caller, KeyAdmin},
    admin_token,
    cache::{CacheSettings, KeyCache},
    config::{Config, Settings},
    credits::CreditLedger,
    ratelimit::RateLimiters,
    replica_state::ReplicaKeyState,
    store::{SqliteOwner, Store},
    telemetry,
};

/// mimalloc rather than glibc's allocator for the process's Rust
/// allocations: a cache-hit Check cost 82,004 instructions instead of
/// 90,546, and a webhook delivery 122,842 instead of 137,837 (with
/// SQLite's allocation statistics off, `.cargo/config.toml`), much of
/// glibc's share being `malloc_consolidate` and its free-list walks
/// (BENCHMARKS.md, session 21). SQLite's own allocations still go to
/// glibc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// API keys for the Envoy / Istio data plane: an ext_authz Check service and
/// a KeyAdmin gRPC API.
///
/// Every setting can be given as a flag, as a KEYGATE_* environment variable,
/// or as a key in the TOML file named by --config (flag > env > file >
/// default).
#[derive(Parser)]
#[command(name = "keygate", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve Check and KeyAdmin until SIGTERM, then drain gracefully.
    Serve(ServerArgs),
    /// Apply database migrations and exit.
    Migrate(ServerArgs),
    /// Soft-delete expired keys, revoke dormant ones (KEYGATE_DORMANT_AFTER)
    /// and delete usage past the retention, once.
    Prune(ServerArgs),
    /// Import keys from another system (JSON Lines, one key a line: owner_id,
    /// name, environment, abilities, superkey, expires_at, metadata,
    /// allowed_cidrs, and key or key_sha256). Prints one line per row; rows
    /// already present are left alone, so an import can be run again.
    Import {
        /// The JSON Lines file; `-` reads standard input.
        file: PathBuf,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Print a fresh admin token and the KEYGATE_ADMIN_TOKENS entry for it.
    AdminToken {
        /// Token name: the actor recorded in audit events.
        #[arg(long, default_value = "operator", value_parser = admin_token::parse_name)]
        name: String,
        /// `service` (acts for the owner it names), `admin` (may also call
        /// the admin RPCs) or `feed` (KeyFeed only, for a keygate-envoy
        /// module).
        #[arg(long, value_enum, default_value = "admin")]
        role: RoleArg,
        /// `text` for a person; `env` (ADMIN_TOKEN=… and
        /// KEYGATE_ADMIN_TOKENS=…, for `eval`) or `json` for scripts.
        #[arg(long, value_enum, default_value = "text")]
        format: admin_token::Format,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum RoleArg {
    Service,
    Admin,
    /// KeyFeed only: the token a keygate-envoy module follows the feed with.
    Feed,
}

#[derive(Args)]
struct ServerArgs {
    /// TOML configuration file; its keys are the setting names below.
    #[arg(long, env = "KEYGATE_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: Settings,
}

impl ServerArgs {
    fn load(self) -> anyhow::Result<Config> {
        let settings = self.settings.with_file(self.config.as_deref())?;
        Ok(settings.validate()?)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("keygate: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("keygate: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn execute(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => {
            let config = args.load()?;
            telemetry::init_logging(config.log_format);
            telemetry::init_metrics(config.metrics_addr)?;
            survive_file_size_limit()?;
            keygate::app::run(config, keygate::shutdown::signal()).await
        }
        Command::Migrate(args) => {
            let config = args.load()?;
            telemetry::init_logging(config.log_format);
            let store = open_store(&config).await?;
            store.migrate().await?;
            tracing::info!("migrations applied");
            store.close().await;
            Ok(())
        }
        Command::Prune(args) => {
            let config = args.load()?;
            telemetry::init_logging(config.log_format);
            let store = open_store(&config).await?;
            let admin = offline_admin(&config, &store);
            let summary = admin.prune("keygate-prune-cli").await?;
            store.close().await;
            match summary {
                Some(s) => print(&format!(
                    "pruned: {} expired keys soft-deleted, {} usage log rows and {} daily counts deleted, {} finished webhook deliveries deleted, {} dormant keys revoked, {} leak reports forgotten",
                    s.keys_expired, s.usage_logs_deleted, s.daily_counts_deleted, s.webhook_deliveries_deleted, s.keys_dormant, s.leak_reports_deleted
                )),
                None => print("another keygate is pruning right now; nothing done"),
            }
            Ok(())
        }
        Command::Import { file, server } => {
            let config = server.load()?;
            telemetry::init_logging(config.log_format);
            let rows = import_file::read(&file)?;
            // A server of the same SQLite file would not know of the keys
            // until it restarts: its issued-key set is filled at start.
            let _sqlite_owner = SqliteOwner::claim(&config.store_options().url).context(
                "keygate import cannot add keys beside a running server: send them through its \
                 ImportKeys RPC, or stop it first",
            )?;
            let store = open_store(&config).await?;
            let admin = offline_admin(&config, &store);
            let caller = Caller {
                actor: "keygate-import-cli".to_owned(),
                role: AdminRole::Admin,
            };
            let outcomes = admin.import_keys(&caller, rows).await;
            store.close().await;
            let report = import_file::Report::of(&outcomes?);
            print(&report.text);
            if report.invalid > 0 {
                anyhow::bail!("{} rows were invalid and not imported", report.invalid);
            }
            Ok(())
        }
        Command::AdminToken { name, role, format } => {
            let role = match role {
                RoleArg::Admin => AdminRole::Admin,
                RoleArg::Service => AdminRole::Service,
                RoleArg::Feed => AdminRole::Feed,
            };
            print(&admin_token::issue(&name, role, format));
            Ok(())
        }
    }
}

/// A write past the file size limit (`RLIMIT_FSIZE`) raises SIGXFSZ, whose
/// default action ends the process: keygate would die with its buffered
/// usage instead of failing that one write with EFBIG, reporting it like a
/// full disk, and recovering once the limit is lifted. Installing a handler
/// (tokio's, never read) is what turns the signal into the error.
#[cfg(target_os = "linux")]
fn survive_file_size_limit() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let xfsz = SignalKind::from_raw(rustix::process::Signal::XFSZ.as_raw());
    drop(signal(xfsz).map_err(|error| anyhow::anyhow!("cannot handle SIGXFSZ: {error}"))?);
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn survive_file_size_limit() -> anyhow::Result<()> {
    Ok(())
}

/// KeyAdmin for a one-shot command: no cache worth the name, the settings
/// of the configuration.
fn offline_admin(config: &Config, store: &Store) -> KeyAdmin {
    let cache = std::sync::Arc::new(KeyCache::new(
        store.clone(),
        CacheSettings {
            capacity: 1,
            ttl: config.cache_ttl,
            negative_capacity: 1,
            negative_ttl: config.negative_cache_ttl,
            stale_if_error: config.cache_stale_if_error,
            max_concurrent_misses: config.max_concurrent_misses,
        },
    ));
    KeyAdmin::new(
        store.clone(),
        config.key_format.clone(),
        config.ability_catalog.clone(),
        config.max_keys_per_owner,
        config.usage_log_retention_days,
        ReplicaKeyState::new(
            cache,
            std::sync::Arc::new(RateLimiters::new(1)),
            std::sync::Arc::new(CreditLedger::new(
                store.clone(),
                config.credit_lease,
                config.check_timeout,
                keygate::clock::Clock::system(),
            )),
        ),
    )
    .with_hygiene(config.hygiene_policy())
}

async fn open_store(config: &Config) -> anyhow::Result<Store> {
    Ok(Store::connect(&config.store_options()).await?)
}

/// Command output for the operator (not a log line).
#[allow(clippy::print_stdout)]
fn print(text: &str) {
    println!("{text}");
}
