//! Lists in the TOML file: a TOML array, or the comma-separated string the
//! environment variables take (kept for files written before arrays were
//! accepted). Both read the same.

use serde::{de::Error, Deserialize, Deserializer};

#[derive(Deserialize)]
#[serde(untagged)]
enum StringOrArray {
    String(String),
    Array(Vec<String>),
}

/// A list setting kept as its comma-separated form, which the flag and the
/// environment variable give and validation splits. An array item holding
/// a comma is refused: it would read as two.
pub fn comma_string_or_array<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    Ok(match Option::<StringOrArray>::deserialize(deserializer)? {
        None => None,
        Some(StringOrArray::String(joined)) => Some(joined),
        Some(StringOrArray::Array(items)) => {
            if let Some(item) = items.iter().find(|item| item.contains(',')) {
                return Err(D::Error::custom(format!(
                    "the list item {item:?} contains a comma; give each value as its own array item"
                )));
            }
            Some(items.join(","))
        }
    })
}

/// A list setting kept as its items (`[[routes]].abilities`).
pub fn items_from_string_or_array<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<String>, D::Error> {
    Ok(match StringOrArray::deserialize(deserializer)? {
        StringOrArray::String(joined) => joined
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(str::to_owned)
            .collect(),
        StringOrArray::Array(items) => items,
    })
}
