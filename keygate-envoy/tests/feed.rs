//! How the feed's follower applies keygate's updates to the table the
//! filter reads (`keygate_envoy::feed::Session`): a snapshot is put in place
//! only once complete, later changes apply in place, and an update that
//! cannot be read changes nothing. The real stream from a real keygate is
//! tests/e2e/test_envoy_module_feed.py's.

use keygate::{
    domain::{IssuedKey, KeyFormat},
    feed_proto::{KeyTableUpdate, TableKey},
};
use std::sync::Arc;

use keygate_envoy::{
    feed::{Session, SharedFeed},
    settings::FeedSettings,
    table::{Lookup, SharedTable},
};

fn format() -> KeyFormat {
    KeyFormat::new("sk", &["live".into()], 32).unwrap()
}

fn fed(key: &IssuedKey, id: &str) -> TableKey {
    TableKey {
        hash: key.hash.as_bytes().to_vec(),
        id: id.into(),
        owner_id: "acme".into(),
        environment: "live".into(),
        key_prefix: "sk_live_abcdefgh".into(),
        ..Default::default()
    }
}

fn update(keys: Vec<TableKey>, begins: bool, complete: bool) -> KeyTableUpdate {
    KeyTableUpdate {
        snapshot_begins: begins,
        snapshot_complete: complete,
        keys,
        removed_key_ids: Vec::new(),
    }
}

fn found(table: &SharedTable, key: &IssuedKey) -> Option<bool> {
    match table.lookup(&key.hash) {
        Lookup::NotReady => None,
        Lookup::Unknown => Some(false),
        Lookup::Found(_) => Some(true),
    }
}

const A: &str = "01900000-0000-7000-8000-00000000000a";
const B: &str = "01900000-0000-7000-8000-00000000000b";

#[test]
fn a_snapshot_is_put_in_place_only_once_complete() {
    let (a, b) = (format().generate("live"), format().generate("live"));
    let table = SharedTable::default();
    let mut session = Session::default();
    assert_eq!(
        session
            .apply(update(vec![fed(&a, A)], true, false), &table)
            .unwrap(),
        None
    );
    assert_eq!(found(&table, &a), None, "half a snapshot is not a table");
    assert_eq!(
        session
            .apply(update(vec![fed(&b, B)], false, true), &table)
            .unwrap(),
        Some(2)
    );
    assert_eq!(
        (found(&table, &a), found(&table, &b)),
        (Some(true), Some(true))
    );

    // A new snapshot replaces the table whole: a key it lacks is gone.
    assert_eq!(
        session
            .apply(update(vec![fed(&b, B)], true, true), &table)
            .unwrap(),
        Some(1)
    );
    assert_eq!(
        (found(&table, &a), found(&table, &b)),
        (Some(false), Some(true))
    );
}

#[test]
fn changes_after_a_snapshot_apply_in_place_and_removals_go_by_id() {
    let (a, b) = (format().generate("live"), format().generate("live"));
    let table = SharedTable::default();
    let mut session = Session::default();
    // A change before any snapshot has no table to go to.
    session
        .apply(update(vec![fed(&a, A)], false, false), &table)
        .unwrap();
    assert_eq!(found(&table, &a), None);

    session
        .apply(update(vec![fed(&a, A)], true, true), &table)
        .unwrap();
    let mut revoked = fed(&a, A);
    revoked.revoked_at = Some(prost_types::Timestamp {
        seconds: 1_700_000_000,
        nanos: 0,
    });
    session
        .apply(update(vec![revoked, fed(&b, B)], false, false), &table)
        .unwrap();
    match table.lookup(&a.hash) {
        Lookup::Found(key) => assert!(key.revoked_at.is_some(), "the change replaced the entry"),
        other => panic!("{other:?}"),
    }
    assert_eq!(found(&table, &b), Some(true));

    let removal = KeyTableUpdate {
        removed_key_ids: vec![A.into()],
        ..Default::default()
    };
    session.apply(removal, &table).unwrap();
    assert_eq!(
        (found(&table, &a), found(&table, &b)),
        (Some(false), Some(true))
    );
}

#[test]
fn an_update_that_cannot_be_read_changes_nothing_and_names_no_hash() {
    let (a, b) = (format().generate("live"), format().generate("live"));
    let table = SharedTable::default();
    let mut session = Session::default();
    session
        .apply(update(vec![fed(&a, A)], true, true), &table)
        .unwrap();
    let mut bad = fed(&b, B);
    bad.hash.truncate(31);
    let err = session
        .apply(
            update(
                vec![fed(&b, "01900000-0000-7000-8000-00000000000c"), bad],
                false,
                false,
            ),
            &table,
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("hash"), "{err}");
    assert!(
        !err.contains(&hex::encode(&b.hash.as_bytes()[..31])),
        "{err}"
    );
    assert_eq!(
        found(&table, &b),
        Some(false),
        "the readable key of the update was not applied either"
    );
    let removal = KeyTableUpdate {
        removed_key_ids: vec!["nope".into()],
        ..Default::default()
    };
    assert!(session.apply(removal, &table).is_err());
    assert_eq!(found(&table, &a), Some(true));
}

#[test]
fn filter_configs_with_the_same_feed_settings_share_one_feed_while_one_holds_it() {
    fn no_log(_: keygate_envoy::feed::Level, _: &str) {}
    // Nothing listens on port 1: these feeds never connect.
    let settings = |address: &str| -> FeedSettings {
        serde_json::from_value(serde_json::json!({"address": address, "report_usage": false}))
            .unwrap()
    };
    let first = SharedFeed::get_or_start(&settings("http://127.0.0.1:1"), no_log).unwrap();
    let again = SharedFeed::get_or_start(&settings("http://127.0.0.1:1"), no_log).unwrap();
    assert!(Arc::ptr_eq(&first, &again), "one feed, one table");
    let other = SharedFeed::get_or_start(&settings("http://localhost:1"), no_log).unwrap();
    assert!(!Arc::ptr_eq(&first, &other));
    assert!(first.usage.is_none());

    let (feed, table) = (Arc::downgrade(&first), Arc::downgrade(&first.table));
    drop((first, again));
    assert!(
        feed.upgrade().is_none(),
        "the feed went with the last config holding it"
    );
    // Its thread lets go of the table once it sees it was stopped.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while table.upgrade().is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "the feed's thread did not stop"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let fresh = SharedFeed::get_or_start(&settings("http://127.0.0.1:1"), no_log).unwrap();
    assert!(!Arc::ptr_eq(&fresh, &other));
}
