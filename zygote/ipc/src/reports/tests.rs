//! Unit tests of `zygote/ipc/src/reports.rs`.

use proptest::prelude::*;

use super::*;

const CAPS: ReportCaps = ReportCaps {
    result_bytes: 64,
    file_count: 3,
    file_bytes: 100,
};

fn decode(function_mode: bool, packets: &[&[u8]]) -> Reports {
    let mut decoder = ReportDecoder::new(CAPS, function_mode);
    for packet in packets {
        if decoder.feed(packet, 0) == Next::Stop {
            break;
        }
    }
    decoder.finish()
}

#[test]
fn a_well_behaved_child_is_understood() {
    let reports = decode(
        true,
        &[
            br#"{"op":"result","size":2}"#,
            b"42",
            br#"{"op":"files","entries":[{"path":"a","size":3},{"path":"d/b","size":0}],"truncated":true,"size":3}"#,
            b"ab",
            b"c",
            br#"{"op":"done"}"#,
        ],
    );
    assert_eq!(reports.result, Some(Ok(b"42".to_vec())));
    assert_eq!(reports.files.len(), 2);
    assert_eq!(reports.files[0].content, b"abc");
    assert!(reports.files[1].content.is_empty());
    assert!(reports.files_truncated, "the child's own claim is kept");
    assert!(reports.done);
    assert_eq!(reports.misuse, None);
}

#[test]
fn sizes_that_overflow_are_refused_not_sliced() {
    let header = format!(
        r#"{{"op":"files","entries":[{{"path":"a","size":{}}},{{"path":"b","size":2}}],"truncated":false,"size":1}}"#,
        u64::MAX
    );
    let reports = decode(false, &[header.as_bytes(), b"x", br#"{"op":"done"}"#]);
    assert!(reports.misuse.unwrap().contains("overflow"));
    assert!(reports.files.is_empty() && reports.files_truncated && !reports.done);
}

#[test]
fn what_the_program_may_forge_is_refused() {
    // A result in script mode, a second result, a result after the files.
    for packets in [
        &[&br#"{"op":"result","size":1}"#[..], b"1"][..],
        &[
            br#"{"op":"result","size":1}"#,
            b"1",
            br#"{"op":"result","size":1}"#,
        ],
    ] {
        let function_mode = packets.len() > 2;
        let reports = decode(function_mode, packets);
        assert!(reports.misuse.is_some(), "{reports:?}");
        assert_eq!(reports.result, None, "nothing after a misuse is believed");
    }
    let unsafe_path =
        br#"{"op":"files","entries":[{"path":"../x","size":1}],"truncated":false,"size":1}"#;
    assert!(decode(false, &[unsafe_path]).misuse.is_some());
    assert!(decode(false, &[b"\xff garbage"]).misuse.is_some());
    assert!(decode(false, &[br#"{"op":"done","exit_code":0}"#])
        .misuse
        .is_some());
    assert!(decode(false, &[br#"{"op":"ready"}"#]).misuse.is_some());
    // A payload packet longer than what remains.
    assert!(decode(true, &[br#"{"op":"result","size":1}"#, b"12"])
        .misuse
        .is_some());
}

#[test]
fn descriptors_end_the_reading() {
    let mut decoder = ReportDecoder::new(CAPS, false);
    assert_eq!(decoder.feed(br#"{"op":"done"}"#, 1), Next::Stop);
    let reports = decoder.finish();
    assert!(reports.misuse.unwrap().contains("descriptor"));
    assert!(!reports.done);
}

#[test]
fn a_result_over_the_cap_is_refused_unread() {
    let reports = decode(true, &[br#"{"op":"result","size":65}"#, b"never read"]);
    assert!(matches!(reports.result, Some(Err(_))));
    assert_eq!(reports.packets, 1);
    assert_eq!(reports.misuse, None);
}

#[test]
fn a_flood_is_cut_off_at_the_budget() {
    let mut decoder = ReportDecoder::new(CAPS, true);
    let huge = CAPS.result_bytes; // stays within the result cap: only the count is at fault
    let header = format!(r#"{{"op":"result","size":{huge}}}"#);
    assert_eq!(decoder.feed(header.as_bytes(), 0), Next::Read);
    let mut fed = 1;
    while decoder.feed(b"x", 0) == Next::Read {
        fed += 1;
        assert!(fed <= CAPS.max_packets(), "the budget must stop a flood");
    }
    // 64 one-byte packets fit the budget: the blob completed, then "x" is no header.
    let reports = decoder.finish();
    assert!(reports.packets <= CAPS.max_packets() + 1);
    let big = ReportCaps {
        result_bytes: 1 << 20,
        file_count: 100,
        file_bytes: 1 << 20,
    };
    let mut decoder = ReportDecoder::new(big, true);
    assert_eq!(
        decoder.feed(br#"{"op":"result","size":1048576}"#, 0),
        Next::Read
    );
    let mut packets = 1u64;
    while decoder.feed(b"y", 0) == Next::Read {
        packets += 1;
    }
    let reports = decoder.finish();
    assert!(reports.misuse.unwrap().contains("packets"));
    assert_eq!(packets, big.max_packets());
}

#[test]
fn each_purpose_takes_its_own_reports_only() {
    let feed = |purpose, packets: &[&[u8]]| {
        let mut decoder = ReportDecoder::for_purpose(CAPS, purpose);
        for packet in packets {
            if decoder.feed(packet, 0) == Next::Stop {
                break;
            }
        }
        decoder.finish()
    };
    let cell = feed(
        Purpose::Cell,
        &[
            br#"{"op":"result","size":2}"#,
            b"42",
            br#"{"op":"cell_done","failed":false}"#,
        ],
    );
    assert_eq!(
        (cell.result, cell.cell_failed, cell.done),
        (Some(Ok(b"42".to_vec())), Some(false), true)
    );
    // A run's "done" or "files" in a cell, a cell's "cell_done" in a run: misuse.
    for (purpose, packet) in [
        (Purpose::Cell, &br#"{"op":"done"}"#[..]),
        (
            Purpose::Cell,
            br#"{"op":"files","entries":[],"truncated":false,"size":0}"#,
        ),
        (
            Purpose::Run {
                function_mode: false,
            },
            br#"{"op":"cell_done","failed":false}"#,
        ),
        (Purpose::Listing, br#"{"op":"result","size":1}"#),
        (
            Purpose::ReadFile,
            br#"{"op":"listing","entries":[],"truncated":false}"#,
        ),
    ] {
        let reports = feed(purpose, &[packet]);
        assert!(
            reports.misuse.is_some(),
            "{purpose:?}: {}",
            String::from_utf8_lossy(packet)
        );
    }
    let listing = feed(
        Purpose::Listing,
        &[
            br#"{"op":"listing","entries":[{"path":"a/b","size":7}],"truncated":true}"#,
            br#"{"op":"done"}"#,
        ],
    );
    assert_eq!(
        listing.listing,
        vec![FileEntry {
            path: "a/b".into(),
            size: 7
        }]
    );
    assert!(listing.files_truncated && listing.done);
    for bad in [
        &br#"{"op":"listing","entries":[{"path":"../etc","size":7}],"truncated":false}"#[..],
        br#"{"op":"listing","entries":[{"path":"a","size":1},{"path":"b","size":1},{"path":"c","size":1},{"path":"d","size":1}],"truncated":false}"#,
    ] {
        let reports = feed(Purpose::Listing, &[bad]);
        assert!(reports.misuse.is_some() && reports.listing.is_empty());
    }
}

fn header() -> impl Strategy<Value = Vec<u8>> {
    let size = prop_oneof![0u64..200, Just(u64::MAX), any::<u64>()];
    let path = prop_oneof![
        Just("a".to_string()),
        Just("../x".to_string()),
        "[a-z/.]{0,12}",
    ];
    prop_oneof![
        size.clone()
            .prop_map(|size| format!(r#"{{"op":"result","size":{size}}}"#).into_bytes()),
        (
            proptest::collection::vec((path, size.clone()), 0..5),
            any::<bool>(),
            size
        )
            .prop_map(|(entries, truncated, size)| {
                let entries: Vec<String> = entries
                    .iter()
                    .map(|(p, s)| format!(r#"{{"path":{p:?},"size":{s}}}"#))
                    .collect();
                format!(
                    r#"{{"op":"files","entries":[{}],"truncated":{truncated},"size":{size}}}"#,
                    entries.join(",")
                )
                .into_bytes()
            }),
        Just(br#"{"op":"done"}"#.to_vec()),
        any::<bool>()
            .prop_map(|failed| format!(r#"{{"op":"cell_done","failed":{failed}}}"#).into_bytes()),
        (
            proptest::collection::vec("[a-z/.]{0,12}", 0..6),
            any::<bool>()
        )
            .prop_map(|(paths, truncated)| {
                let entries: Vec<String> = paths
                    .iter()
                    .map(|p| format!(r#"{{"path":{p:?},"size":1}}"#))
                    .collect();
                format!(
                    r#"{{"op":"listing","entries":[{}],"truncated":{truncated}}}"#,
                    entries.join(",")
                )
                .into_bytes()
            }),
    ]
}

fn purpose() -> impl Strategy<Value = Purpose> {
    prop_oneof![
        any::<bool>().prop_map(|function_mode| Purpose::Run { function_mode }),
        Just(Purpose::Cell),
        Just(Purpose::Listing),
        Just(Purpose::ReadFile),
    ]
}

fn packet() -> impl Strategy<Value = (Vec<u8>, usize)> {
    let bytes = prop_oneof![header(), proptest::collection::vec(any::<u8>(), 0..300),];
    (bytes, prop_oneof![8 => Just(0usize), 1 => 1usize..4])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Random and adversarial packet sequences: no panic, nothing kept beyond the caps, the
    /// budget holds, and nothing is believed after a misuse.
    #[test]
    fn no_sequence_breaks_the_decoder(
        purpose in purpose(),
        packets in proptest::collection::vec(packet(), 0..40),
    ) {
        let mut decoder = ReportDecoder::for_purpose(CAPS, purpose);
        let mut fed = 0u64;
        for (data, fds) in &packets {
            fed += 1;
            if decoder.feed(data, *fds) == Next::Stop {
                break;
            }
        }
        let reports = decoder.finish();
        prop_assert!(reports.packets <= fed);
        prop_assert!(reports.packets <= CAPS.max_packets() + 1);
        let kept: usize = reports.files.iter().map(|f| f.content.len()).sum();
        prop_assert!(kept as u64 <= CAPS.file_bytes);
        prop_assert!(reports.files.len() as u64 <= CAPS.file_count);
        if let Some(Ok(result)) = &reports.result {
            let takes_values = matches!(purpose, Purpose::Run { function_mode: true } | Purpose::Cell);
            prop_assert!(takes_values);
            prop_assert!(result.len() as u64 <= CAPS.result_bytes);
        }
        let takes_files = matches!(purpose, Purpose::Run { .. } | Purpose::ReadFile);
        if !takes_files {
            prop_assert!(reports.files.is_empty());
        }
        if purpose != Purpose::Listing {
            prop_assert!(reports.listing.is_empty());
        }
        prop_assert_eq!(reports.cell_failed.is_some(), purpose == Purpose::Cell && reports.done);
        prop_assert!(reports.listing.len() as u64 <= CAPS.file_count);
        if reports.misuse.is_some() {
            prop_assert!(reports.result.is_none() && reports.files.is_empty() && reports.listing.is_empty());
        }
        for file in &reports.files {
            prop_assert!(check_relative_path(&file.path).is_ok());
        }
        for entry in &reports.listing {
            prop_assert!(check_relative_path(&entry.path).is_ok());
        }
    }
}
