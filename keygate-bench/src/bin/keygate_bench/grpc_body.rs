//! `keygate-bench grpc-body`: one Check request as an HTTP/2 request body,
//! for a load generator that knows nothing of gRPC (`h2load -d FILE`).
//!
//! The body is the gRPC frame of a `CheckRequest` (a zero compression flag,
//! the message length as a big-endian u32, the protobuf message) for
//! `GET /v1/orders/42` carrying a key issued through KeyAdmin (or the key of
//! `--token-file`, e.g. one made with an allow-list or imported), so that
//! every request sent with it is a cache hit once the first has been served.
//! The no-op server answers the same body without reading it.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use prost::Message;

use super::workload::{self, Issuer, Mix};

#[derive(Debug, Args)]
pub struct GrpcBodyArgs {
    /// keygate's KeyAdmin listener, where the key is issued.
    #[arg(long, default_value = "127.0.0.1:50052")]
    admin: String,
    /// Bearer token for KeyAdmin, when the server has admin tokens.
    #[arg(long, env = "KEYGATE_BENCH_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Frame the key held in this file (its first line) instead of issuing
    /// one. A file, not an argument, so that the key stays off command lines.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Where to write the body.
    #[arg(long)]
    out: PathBuf,
}

pub async fn run(args: GrpcBodyArgs) -> anyhow::Result<()> {
    let key = match &args.token_file {
        Some(path) => read_token(path)?,
        None => issue_one(&args).await?,
    };
    let body = frame(&workload::check_request(&key).encode_to_vec())?;
    std::fs::write(&args.out, body)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    Ok(())
}

fn read_token(path: &std::path::Path) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim();
    anyhow::ensure!(!token.is_empty(), "{} holds no key", path.display());
    Ok(token.to_owned())
}

async fn issue_one(args: &GrpcBodyArgs) -> anyhow::Result<String> {
    let issuer = Issuer {
        admin: &args.admin,
        token: args.admin_token.as_deref(),
    };
    let only_valid = Mix {
        valid: 1,
        unknown: 0,
        malformed: 0,
    };
    let credentials = workload::credentials(only_valid, 1, &issuer).await?;
    let key = credentials.valid().first().context("no key was issued")?;
    Ok(key.clone())
}

/// A gRPC length-prefixed message, uncompressed.
fn frame(message: &[u8]) -> anyhow::Result<Vec<u8>> {
    let length = u32::try_from(message.len()).context("message too long for one gRPC frame")?;
    let mut body = Vec::with_capacity(5 + message.len());
    body.push(0);
    body.extend_from_slice(&length.to_be_bytes());
    body.extend_from_slice(message);
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_is_a_flag_a_big_endian_length_and_the_message() {
        assert_eq!(frame(&[7, 8, 9]).unwrap(), vec![0, 0, 0, 0, 3, 7, 8, 9]);
    }
}
