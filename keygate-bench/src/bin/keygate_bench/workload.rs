//! What the load generator sends: the request mix, the credentials of each
//! class (issued, unknown, malformed) and the Check requests built from them.

use std::{collections::HashMap, str::FromStr, time::Duration};

use anyhow::Context;
use envoy_types::{
    ext_authz::v3::pb::{Address, CheckRequest},
    pb::envoy::{
        config::core::v3::{
            socket_address::PortSpecifier, Address as AddressMessage, SocketAddress,
        },
        service::auth::v3::{
            attribute_context::{HttpRequest, Peer, Request as AttrRequest},
            AttributeContext,
        },
    },
};
use futures::{stream, StreamExt, TryStreamExt};
use keygate::{
    domain::{key::BASE58_ALPHABET, KeyFormat},
    proto::{key_admin_client::KeyAdminClient, CreateKeyRequest},
};
use tonic::{metadata::AsciiMetadataValue, transport::Channel, Request};

/// The ability every issued key holds and every request requires, so that
/// the ability check is part of the measured path.
pub const ABILITY: &str = "read:orders";
/// The request path; usage normalises it to `/v1/orders/{id}`.
pub const PATH: &str = "/v1/orders/42";
/// What Envoy would report as the client (also sent as `x-forwarded-for`).
const CLIENT_IP: &str = "203.0.113.7";
/// keygate's default `max_keys_per_owner` is 100: stay well below it.
const KEYS_PER_OWNER: usize = 50;
/// CreateKey calls in flight while issuing keys.
const CREATE_CONCURRENCY: usize = 8;

/// Relative weights of the three request classes, e.g.
/// `valid=90,unknown=5,malformed=5`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mix {
    pub valid: u32,
    pub unknown: u32,
    pub malformed: u32,
}

impl FromStr for Mix {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut mix = Mix {
            valid: 0,
            unknown: 0,
            malformed: 0,
        };
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected class=weight"))?;
            let weight: u32 = weight
                .parse()
                .map_err(|_| format!("{part:?}: weight must be a whole number"))?;
            match name.trim() {
                "valid" => mix.valid = weight,
                "unknown" => mix.unknown = weight,
                "malformed" => mix.malformed = weight,
                other => {
                    return Err(format!(
                        "unknown class {other:?} (valid, unknown, malformed)"
                    ))
                }
            }
        }
        if mix.total() == 0 {
            return Err("the mix has no weight".into());
        }
        Ok(mix)
    }
}

impl Mix {
    fn total(&self) -> u32 {
        self.valid + self.unknown + self.malformed
    }
}

/// A fixed, reproducible sequence of requests: request `seq` picks its
/// class by weight and a key of that class, both from a hash of `seq`, so
/// the proportions hold over any window and no key is favoured.
pub struct Workload<T> {
    mix: Mix,
    valid: Vec<T>,
    unknown: Vec<T>,
    malformed: Vec<T>,
}

/// splitmix64: a cheap, well-mixed hash of the sequence number.
fn mix64(seq: u64) -> u64 {
    let mut z = seq.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl<T> Workload<T> {
    pub fn get(&self, seq: u64) -> &T {
        let h = mix64(seq);
        let slot = (h % u64::from(self.mix.total())) as u32;
        let class = if slot < self.mix.valid {
            &self.valid
        } else if slot < self.mix.valid + self.mix.unknown {
            &self.unknown
        } else {
            &self.malformed
        };
        &class[((h >> 32) % class.len() as u64) as usize]
    }

    /// The issued keys.
    pub fn valid(&self) -> &[T] {
        &self.valid
    }

    /// The same sequence over another representation of the credentials.
    pub fn map<U>(&self, f: impl Fn(&T) -> U) -> Workload<U> {
        Workload {
            mix: self.mix,
            valid: self.valid.iter().map(&f).collect(),
            unknown: self.unknown.iter().map(&f).collect(),
            malformed: self.malformed.iter().map(&f).collect(),
        }
    }
}

/// Where to issue keys.
pub struct Issuer<'a> {
    pub admin: &'a str,
    pub token: Option<&'a str>,
}

/// Builds the credential sets for `mix`: `keys` issued through KeyAdmin
/// (only when the mix has valid requests), `keys` unknown and `keys`
/// malformed ones.
pub async fn credentials(
    mix: Mix,
    keys: usize,
    issuer: &Issuer<'_>,
) -> anyhow::Result<Workload<String>> {
    let format = KeyFormat::new("sk", &["live".into(), "test".into()], 32)?;
    let valid = if mix.valid > 0 {
        issue_keys(issuer, keys).await?
    } else {
        Vec::new()
    };
    // Well-formed, correct checksum, never issued.
    let unknown: Vec<String> = (0..keys)
        .map(|_| format.generate("live").plaintext.into_exposed())
        .collect();
    let malformed = unknown.iter().map(|k| corrupt_checksum(k)).collect();
    Ok(Workload {
        mix,
        valid,
        unknown,
        malformed,
    })
}

/// The same key with its last (checksum) character changed.
fn corrupt_checksum(key: &str) -> String {
    let (body, last) = key.split_at(key.len() - 1);
    let replacement = BASE58_ALPHABET
        .iter()
        .map(|&b| b as char)
        .find(|c| c.to_string() != last)
        .expect("the alphabet has more than one character");
    format!("{body}{replacement}")
}

async fn issue_keys(issuer: &Issuer<'_>, count: usize) -> anyhow::Result<Vec<String>> {
    let channel = Channel::from_shared(format!("http://{}", issuer.admin))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("cannot reach KeyAdmin at {}", issuer.admin))?;
    let client = KeyAdminClient::new(channel);
    let authorization = bearer(issuer.token)?;
    // Owners unique to this run, so repeated runs on one database never
    // reach max_keys_per_owner.
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    stream::iter(0..count)
        .map(|i| {
            let mut client = client.clone();
            let request = admin_request(
                CreateKeyRequest {
                    owner_id: format!("bench-{run}-{}", i / KEYS_PER_OWNER),
                    name: format!("bench key {i}"),
                    environment: "live".into(),
                    abilities: vec![ABILITY.into()],
                    ..Default::default()
                },
                authorization.as_ref(),
            );
            async move {
                let created = client.create_key(request).await?.into_inner();
                Ok::<_, tonic::Status>(created.key)
            }
        })
        .buffer_unordered(CREATE_CONCURRENCY)
        .try_collect()
        .await
        .context("CreateKey failed")
}

/// The `authorization` metadata for a KeyAdmin token, if any.
pub fn bearer(token: Option<&str>) -> anyhow::Result<Option<AsciiMetadataValue>> {
    token
        .map(|t| format!("Bearer {t}").parse())
        .transpose()
        .context("invalid admin token")
}

/// A KeyAdmin request carrying `token`.
pub fn admin_request<T>(message: T, token: Option<&AsciiMetadataValue>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", token.clone());
    }
    request
}

/// The Check request Envoy would send for `GET /v1/orders/42` carrying
/// `credential`, on a route requiring [`ABILITY`].
pub fn check_request(credential: &str) -> CheckRequest {
    let headers = HashMap::from([
        ("authorization".to_owned(), format!("Bearer {credential}")),
        ("x-forwarded-for".to_owned(), CLIENT_IP.to_owned()),
    ]);
    let source = Peer {
        address: Some(AddressMessage {
            address: Some(Address::SocketAddress(SocketAddress {
                address: CLIENT_IP.into(),
                port_specifier: Some(PortSpecifier::PortValue(40_000)),
                ..Default::default()
            })),
        }),
        ..Default::default()
    };
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(source),
            request: Some(AttrRequest {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    path: PATH.into(),
                    host: "api.example.com".into(),
                    scheme: "http".into(),
                    protocol: "HTTP/1.1".into(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: HashMap::from([(
                "keygate.abilities".to_owned(),
                ABILITY.to_owned(),
            )]),
            ..Default::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_parses_and_rejects_nonsense() {
        assert_eq!(
            "valid=90,unknown=5,malformed=5".parse::<Mix>(),
            Ok(Mix {
                valid: 90,
                unknown: 5,
                malformed: 5
            })
        );
        assert!("valid=0".parse::<Mix>().is_err());
        assert!("bogus=1".parse::<Mix>().is_err());
        assert!("valid".parse::<Mix>().is_err());
    }

    #[test]
    fn the_sequence_follows_the_weights() {
        let workload = Workload {
            mix: "valid=90,unknown=5,malformed=5".parse().unwrap(),
            valid: vec!["v"; 3],
            unknown: vec!["u"; 3],
            malformed: vec!["m"; 3],
        };
        let valid = (0..100_000u64).filter(|&s| *workload.get(s) == "v").count();
        assert!((89_000..91_000).contains(&valid), "{valid}");
    }

    #[test]
    fn a_corrupted_checksum_is_rejected_by_the_key_format() {
        let format = KeyFormat::new("sk", &["live".into()], 32).unwrap();
        let key = format.generate("live").plaintext.into_exposed();
        assert!(format.parse(&key).is_ok());
        assert!(format.parse(&corrupt_checksum(&key)).is_err());
    }
}
