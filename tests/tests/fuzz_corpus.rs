//! The inventory fuzz target's property (`kubeforge_tests::inventory_fuzz`)
//! over the committed corpus `fuzz/seeds/inventory`: the example
//! inventories, bad inventories and inputs the fuzzer found, each of
//! which must still be refused with every finding located, or render
//! into files that parse. `tests/fuzz/run.sh` fuzzes from the same files.

use kubeforge_tests::inventory_fuzz::{check, Outcome};
use std::path::PathBuf;

#[test]
fn committed_fuzz_corpus_keeps_the_property() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/inventory");
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    assert!(entries.len() >= 10, "only {} inputs", entries.len());
    let (mut refused, mut rendered) = (0, 0);
    let mut failures = Vec::new();
    for path in &entries {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        match check(&data) {
            Ok(Outcome::Refused) => refused += 1,
            Ok(Outcome::Rendered { .. }) => rendered += 1,
            Ok(_) => {}
            Err(e) => failures.push(format!("{}: {e}", path.display())),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(
        refused > 0 && rendered > 0,
        "{refused} refused, {rendered} rendered"
    );
}
