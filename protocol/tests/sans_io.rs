//! The protocol crate reads no clock and draws no randomness of its own. Its dependency tree cannot show
//! that: `hpke` enables `getrandom` in `rand_core` and the RustCrypto AEADs (through their default features),
//! so `rand_core::OsRng` is reachable from here. This test keeps the source (every file under `src/`, folders
//! included) from using it, or a clock.

use std::path::PathBuf;

#[test]
fn protocol_source_uses_no_os_randomness_clock_or_io() {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let forbidden = [
        "OsRng",
        "thread_rng",
        "getrandom",
        "from_entropy",
        "SystemTime",
        "Instant",
        "std::fs",
        "std::net",
        "std::thread",
        "tokio",
    ];
    let mut checked = 0;
    let mut folders = vec![src.clone()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap_or_else(|e| panic!("{}: {e}", folder.display())) {
            let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
            if path.is_dir() {
                folders.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text =
                    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                for word in forbidden {
                    assert!(!text.contains(word), "{} mentions {word}", path.display());
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 10, "only {checked} source files found under {}", src.display());
}
