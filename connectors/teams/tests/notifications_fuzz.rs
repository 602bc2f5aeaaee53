//! Property tests: no body, however mangled, makes `parse` or `inspect` panic.

use std::path::PathBuf;

use presync_teams::crypto::DecryptionKeys;
use presync_teams::inspect::inspect;
use presync_teams::notifications::parse;
use proptest::prelude::*;

const FIXTURES: [&str; 7] = [
    "basic-presence.json",
    "batch-two-subscriptions.json",
    "lifecycle-reauthorization-required.json",
    "legacy-basic-with-availability.json",
    "rich-presence.json",
    "malformed-truncated.json",
    "malformed-shape.json",
];

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/teams")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn test_keys() -> DecryptionKeys {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/entra/test-only-key.pem");
    let pem = std::fs::read_to_string(path).expect("key");
    DecryptionKeys::from_pem("presync-test-only-cert", &pem).expect("key parses")
}

/// A fixture with some bytes overwritten, some removed, and then truncated.
fn mutated_fixture(names: &[&'static str]) -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(names.to_vec()),
        prop::collection::vec(
            (any::<prop::sample::Index>(), any::<u8>(), any::<bool>()),
            0..8,
        ),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(name, edits, cut)| {
            let mut body = fixture(name);
            for (at, byte, remove) in edits {
                if body.is_empty() {
                    break;
                }
                let at = at.index(body.len());
                if remove {
                    body.remove(at);
                } else {
                    body[at] = byte;
                }
            }
            let cut = cut.index(body.len() + 1);
            body.truncate(cut);
            body
        })
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse(&body);
        let _ = inspect(&body, None);
    }

    #[test]
    fn mutated_or_truncated_fixtures_never_panic(body in mutated_fixture(&FIXTURES)) {
        let _ = parse(&body);
        let _ = inspect(&body, None);
    }

    #[test]
    fn every_prefix_of_every_fixture_parses_or_is_refused(name in prop::sample::select(FIXTURES.to_vec()), cut in any::<prop::sample::Index>()) {
        let body = fixture(name);
        let cut = cut.index(body.len() + 1);
        if let Err(error) = parse(&body[..cut]) {
            prop_assert!(!error.to_string().contains('\n'));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Decryption runs RSA, so fewer cases.
    #[test]
    fn mutated_rich_fixture_never_panics_when_decrypting(body in mutated_fixture(&["rich-presence.json"])) {
        let _ = inspect(&body, Some(&test_keys()));
    }
}
